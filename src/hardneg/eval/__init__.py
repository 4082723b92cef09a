"""hardneg.eval: measuring embeddings and negatives after (or during) training.

- `knn`, `linear_probe`, `retrieval`: accuracy and retrieval metrics of embeddings;
- `align_uniform`: alignment and uniformity;
- `bounds`: the ordering of the UCL / SCL / H-UCL / H-SCL losses on real batches (`hardneg bounds`);
- `two_view_diagnostics`: the in-batch negatives of an evaluation batch under the tilt (the trainer's
  per-epoch ``diag.*``);
- `diagnose`: `hardneg diagnose`, a strategy's negatives in numbers and advice in words;
- `detectors`: target detectors of the hyperspectral experiment; `run_eval`: evaluating a run folder.
"""
