"""Training and evaluation engine.

train.py        `densepred train`: one stage of one job; resumable, deterministic, DDP-ready
train_state.py  a stage's checkpoint meta, staleness and resumability; TrainState (saved in last.pt)
evaluate.py     `densepred evaluate`: metrics JSON, figures, cost figures, MLflow run
build.py        model, criterion and datasets from a StageRun or from a checkpoint's meta
checkpoint.py   atomic checkpoints, weights-only loading, RNG capture, `--init` with head reset
optim.py        AdamW/SGD parameter groups (decay on weights only, backbone lr), warmup + poly
sampler.py      seeded, resumable data order split over DDP ranks
distributed.py  torchrun process group, reductions, BatchNorm synchronised over gloo or NCCL
runtime.py      threads, determinism, seeds, bf16 autocast, channels_last
progress.py     tqdm bar on a terminal, periodic lines in logs
"""
