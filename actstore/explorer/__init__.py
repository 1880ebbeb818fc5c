"""The explorer page: index.html, explorer.css, explorer.js, copied as they are by `actstore explore`."""
