"""The pages: the explorer (index.html, explorer.css, explorer.js, copied as they are by `actstore explore`)
and the report's report.html (a string.Template that `actstore report` fills)."""
