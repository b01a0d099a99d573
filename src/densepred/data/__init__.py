"""Datasets: synthetic scene generator, NYUD-v2 and Taskonomy readers, prepare step, transforms.

Modules, in the order data flows through them:
- scene (procedural furnished rooms), render (ray casting to depth, normals, labels, RGB),
  synthetic (`synthesize_nyud`, `synthesize_taskonomy`: writers of the real on-disk formats);
- codecs (per-file encodings), matfile (MATLAB v7.3 / v5 files), labels (class tables, 894->40,
  label boundaries), samples (the sample dict and its validation);
- nyud (`NYUDv2`), taskonomy (`Taskonomy`): readers of the raw formats;
- prepare (`prepare_dataset`), shards (`ShardDataset`), stats: validated, sharded datasets;
- transforms (`TrainTransform`, `EvalTransform`, `collate`): joint augmentation and batching.
"""
