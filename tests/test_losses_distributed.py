"""Two gloo processes on CPU: the all-gathered loss and gradients equal the single-process ones on
the concatenated batch (after DDP's division of gradients by the world size)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.losses import build

WORLD = 2
LOCAL = 6


def global_batch():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(WORLD * LOCAL, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(WORLD * LOCAL, 5, generator=generator, dtype=torch.float64)
    view1 = torch.randn(WORLD * LOCAL, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (WORLD * LOCAL,), generator=generator)
    return student, teacher, view1, labels


def evaluate(student, teacher, view1, labels):
    """Loss values and gradients w.r.t. the student (and view1) for every batch-wise loss."""
    calls = {
        "relaxed_contrastive": lambda s, v: build("relaxed_contrastive")(s, teacher),
        "contrastive": lambda s, v: build("contrastive")(s, labels),
        "rkd": lambda s, v: build("rkd")(s, teacher),
        "pkt": lambda s, v: build("pkt")(s, teacher),
        "darkrank": lambda s, v: build("darkrank")(s, teacher, labels),
        "ntxent": lambda s, v: build("ntxent")(s, v),
    }
    results = {}
    for name, call in calls.items():
        s = student.clone().requires_grad_()
        v = view1.clone().requires_grad_()
        loss = call(s, v)
        loss.backward()
        results[name] = (loss.detach(), s.grad, v.grad)
    return results


CRD_DATA = 3 * WORLD * LOCAL  # dataset size: the banks hold rows the batch does not touch too


def crd_batch():
    generator = torch.Generator().manual_seed(1)
    index = torch.randperm(CRD_DATA, generator=generator)[: WORLD * LOCAL]
    contrast_index = torch.randint(0, CRD_DATA, (WORLD * LOCAL, 7), generator=generator)
    return index, contrast_index


def crd_step(student, teacher, index, contrast_index):
    """One training-mode CRD call from the same initial heads and banks: loss, student gradient, banks, Z."""
    torch.manual_seed(2)
    crd = build("crd", student_dim=4, teacher_dim=5, n_data=CRD_DATA, feat_dim=3, num_negatives=7).double()
    s = student.clone().requires_grad_()
    loss = crd(s, teacher, index, contrast_index)
    loss.backward()
    return loss.detach(), s.grad, crd.student_memory.clone(), crd.teacher_memory.clone(), crd.normalizers.clone()


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        student, teacher, _, _ = global_batch()
        results = evaluate(*(t[rows] for t in global_batch()))
        results["crd"] = crd_step(student[rows], teacher[rows], *(t[rows] for t in crd_batch()))
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", ["relaxed_contrastive", "contrastive", "rkd", "pkt", "darkrank", "ntxent"])
def test_gathered_loss_and_gradients_equal_single_process(gathered, name):
    loss, student_grad, view1_grad = evaluate(*global_batch())[name]
    rank_losses = torch.stack([gathered[r][name][0] for r in range(WORLD)])
    if name == "ntxent":
        # lightly scores each rank's own rows against all negatives: the rank losses average to it.
        torch.testing.assert_close(rank_losses.mean(), loss)
    else:
        torch.testing.assert_close(rank_losses, loss.expand(WORLD))
    # Each rank's local gradient is W times the single-process one; DDP averages it back.
    torch.testing.assert_close(torch.cat([gathered[r][name][1] for r in range(WORLD)]) / WORLD, student_grad)
    if name == "ntxent":
        torch.testing.assert_close(torch.cat([gathered[r][name][2] for r in range(WORLD)]) / WORLD, view1_grad)


def test_crd_memory_banks_take_every_ranks_rows_and_stay_identical_across_ranks(gathered):
    """Each rank updates the banks with the whole global batch (not only its rows) and Z is the mean over
    ranks, so both ranks end with the banks and Z of one process that saw the concatenated batch."""
    student, teacher, _, _ = global_batch()
    loss, student_grad, student_bank, teacher_bank, normalizers = crd_step(student, teacher, *crd_batch())
    for rank in range(WORLD):
        _, _, rank_student_bank, rank_teacher_bank, rank_normalizers = gathered[rank]["crd"]
        torch.testing.assert_close(rank_student_bank, student_bank)
        torch.testing.assert_close(rank_teacher_bank, teacher_bank)
        torch.testing.assert_close(rank_normalizers, normalizers)
    # The loss is a mean over rows: the ranks' losses average to it; gradients as for the other losses.
    torch.testing.assert_close(torch.stack([gathered[r]["crd"][0] for r in range(WORLD)]).mean(), loss)
    torch.testing.assert_close(torch.cat([gathered[r]["crd"][1] for r in range(WORLD)]) / WORLD, student_grad)
