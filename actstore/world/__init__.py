"""A ground-truth world: absorption that emerges in SAEs trained (by sae-lens) on a world whose features are known.

`build` makes the world with `sae_lens.synthetic` (parent features with mutually exclusive children, as "starts
with S" and "snake") and writes its rows into an actstore store as a task; `train` trains SAEs of several
architectures and sparsities on it with sae-lens's own trainer; `truth` computes each SAE's ground-truth
absorption from the known features; `compare` sets actstore's measured absorption beside it.
"""
