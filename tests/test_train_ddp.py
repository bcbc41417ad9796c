"""DDP: one step on a global batch of B over 2 gloo processes (torchrun) equals one process on B.

The models use GroupNorm instead of BatchNorm (``norm_layer``): per-process BatchNorm statistics differ
from single-process ones by design, and SyncBatchNorm runs only on GPUs. Augmentation is "none" so both
runs see the same pixels; the teacher is in eval mode. What differs between the runs is then only the
DDP machinery: index sharding, the losses' all-gather with gradients, and DDP's gradient averaging.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import dataclasses, sys
    import torch
    from torch import nn
    torch.set_num_threads(1)
    from pipeline import losses
    from pipeline.distributed import rank
    from pipeline.data import load_dataset
    from pipeline.data.augment import build_augmentation
    from pipeline.models.embedding_model import EmbeddingModel
    from pipeline.models.registry import build_backbone
    from train_support import train_config
    from pipeline.train.loop import fit
    from pipeline.train.objectives import ProxyAnchorObjective, TransferObjective

    out = sys.argv[1]
    data = load_dataset("digits", "train")
    data = dataclasses.replace(data, images=data.images[:64], labels=data.labels[:64])
    augment = build_augmentation("none", 8, 1, data.mean, data.std)

    def model(**kwargs):
        backbone = build_backbone("small_resnet", 1, widths=(8, 16, 16), stem_stride=1,
                                  norm_layer=lambda c: nn.GroupNorm(4, c))
        return EmbeddingModel(backbone, **kwargs)

    config = train_config(epochs=1, max_steps=1, batch_size=32, lr=0.5, momentum=0.0, weight_decay=0.0)
    torch.manual_seed(0)
    teacher = model(projection="simclr", projection_dim=8)
    transfer = TransferObjective(model(embedding_dim=6), teacher, augment, losses.build("relaxed_contrastive"),
                                 teacher_embedding_kind="projection")
    proxy = ProxyAnchorObjective(model(embedding_dim=6), augment,
                                 losses.build("proxy_anchor", num_classes=10, embedding_dim=6))
    states = {}
    for name, objective in (("transfer", transfer), ("proxy_anchor", proxy)):
        before = {k: v.clone() for k, v in objective.state_dict().items()}
        result = fit(objective, data, config)
        states[name] = {"before": before, "after": objective.state_dict(), "loss": result.losses[0][1]}
    if rank() == 0:
        torch.save(states, out)
''')


def run(tmp_path: Path, processes: int, script_text: str = SCRIPT) -> dict:
    """Run ``script_text`` (argv[1]: where rank 0 saves its result) in 1 process, or under torchrun."""
    script = tmp_path / "ddp_step.py"
    script.write_text(script_text)
    out = tmp_path / f"states-{processes}.pt"
    command = [sys.executable, str(script), str(out)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), str(script), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun's workers too, not only torchrun
        raise
    assert process.returncode == 0, stderr[-3000:]
    return torch.load(out, weights_only=True)


def assert_same_step(single: dict, distributed: dict, recipes: tuple[str, ...], loss_rtol: float,
                     update_rtol: float, update_atol: float) -> None:
    """The distributed run's loss and parameter updates equal the single process's, to the tolerances."""
    for recipe in recipes:
        loss = single[recipe]["loss"]
        assert abs(loss - distributed[recipe]["loss"]) <= loss_rtol * abs(loss), recipe
        moved = 0
        for key, after in single[recipe]["after"].items():
            if not after.is_floating_point():
                continue
            before = single[recipe]["before"][key]
            update, distributed_update = after - before, distributed[recipe]["after"][key] - before
            # A missing all-gather or a gradient off by the world size (x2 or x0.5) would be off by the
            # size of the update itself.
            scale = update.abs().max().item()
            assert (distributed_update - update).abs().max().item() <= update_rtol * scale + update_atol, key
            moved += scale > 0
        assert moved > 0, recipe  # the step changed parameters, so the comparison is not vacuous


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    single, distributed = run(tmp_path, 1), run(tmp_path, 2)
    # Same global loss, summed in another order: float32 round-off, observed <= 2e-5 of the update's size.
    assert_same_step(single, distributed, ("transfer", "proxy_anchor"), loss_rtol=1e-5, update_rtol=1e-4,
                     update_atol=1e-7)
