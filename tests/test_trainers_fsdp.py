"""trainers/fsdp.py in one process (a world-size-1 gloo group): the sharded student computes what the
plain one does (sCM JVP, LADD, D phase, update), and its optimiser state and weights round-trip
through the full (unsharded) form the checkpoints and outputs use. Two processes: test_trainers_multiprocess.py."""

import pytest
import torch
import torch.distributed as dist

from tests.fixtures.distill import one_thread  # noqa: F401 (fixture)
from tests.fixtures.distill import tiny_batch, tiny_teacher, trainer_config
from trainers import fsdp
from trainers.config import DistillConfig, ModelConfig, config_from_dict
from trainers.discriminator import Discriminator
from trainers.export import comfy_lora_state_dict
from trainers.optim import apply_update
from trainers.steps import Draws, Nets, discriminator_step, generator_step, scm_target
from trainers.student import build_pair, trainable_state_dict

CFG = DistillConfig(head_blocks=[0, 2], tangent_warmup_steps=10)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def make(mode: str, sharded: bool):
    """Student (adapters / weights moved off the teacher), heads, AdamW; sharded before the optimiser."""
    pair = build_pair(tiny_teacher(), ModelConfig(mode=mode, lora_rank=4, weights_dtype="fp32"),
                      torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pair.student.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    disc = Discriminator(64, CFG.head_blocks)
    if sharded:
        fsdp.shard_student(pair.student, torch.device("cpu"), 1)
    opt = torch.optim.AdamW([p for p in pair.student.parameters() if p.requires_grad], lr=1e-3)
    return pair, Nets.local(pair.student, pair.teacher, disc), opt


def full(t):
    return t.full_tensor() if fsdp.is_sharded(t) else t


def g_then_d(nets, opt):
    """One G step (sCM + LADD) with its update, then one D step; the losses."""
    g = generator_step(nets, tiny_batch(2), CFG, 0, Draws(torch.Generator().manual_seed(5), "cpu"))
    apply_update(opt, [p for group in opt.param_groups for p in group["params"]], 0.1)
    d = discriminator_step(nets, tiny_batch(2, seed=4), CFG, Draws(torch.Generator().manual_seed(6), "cpu"))
    return {**g, **d}


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_sharded_student_computes_what_the_plain_one_does(process_group, mode):
    plain_pair, plain_nets, plain_opt = make(mode, sharded=False)
    pair, nets, opt = make(mode, sharded=True)
    student = pair.student
    assert all(fsdp.is_sharded(p) for p in student.parameters())
    assert sum(isinstance(m, torch.distributed.fsdp.FSDPModule) for m in student.modules()) == 3 + 1  # blocks + root
    for _ in range(2):  # the second G step's JVP follows a teacher pass and a D step (LoRA: adapters toggled)
        want, got = g_then_d(plain_nets, plain_opt), g_then_d(nets, opt)
        fsdp.reshard_root(student)
        for key in ("loss_scm", "loss_adv", "loss_d"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)
    moved = trainable_state_dict(plain_pair.student)  # equal up to float32 rounding (the norm is summed per shard)
    for name, p in trainable_state_dict(student).items():
        torch.testing.assert_close(full(p), moved[name], rtol=1e-5, atol=1e-6)
    assert all(fsdp.is_sharded(p) for p in student.parameters())  # reshard_root: the root unit sharded again


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_one_block_is_gathered_at_a_time(process_group, mode):
    """In the teacher pass and the sCM JVP (no grad) and in the G step's forwards and checkpoint recomputes,
    only the running block holds its full weights: the JVP never gathers the whole student."""
    pair, nets, _ = make(mode, sharded=True)
    blocks = pair.student.dit.transformer_blocks
    gathered = []

    def count(_module, _args):  # runs after FSDP's own pre-hook (prepended) has gathered this block
        gathered.append(sum(not fsdp.is_sharded(b.scale_shift_table) for b in blocks))

    for block in blocks:
        block.register_forward_pre_hook(count)
    batch = tiny_batch(2)
    scm_target(nets, batch, 0.5 * batch.latents, torch.tensor([0.3, 1.2]), torch.tensor([4.0, 5.0]), 0.5, CFG)
    assert gathered == [1] * len(blocks) * (2 if mode == "lora" else 1)  # LoRA: the teacher is the student too
    gathered.clear()
    generator_step(nets, batch, CFG, 0, Draws(torch.Generator().manual_seed(5), "cpu"))
    assert len(gathered) > 2 * len(blocks) and set(gathered) == {1}


def test_optimizer_state_round_trips_through_the_full_form(process_group):
    _, nets, opt = make("full", sharded=True)
    g_then_d(nets, opt)
    saved = fsdp.gathered(opt.state_dict(), keep=True)
    assert not any(fsdp.is_sharded(v) for entry in saved["state"].values() for v in entry.values())
    assert fsdp.gathered(opt.state_dict(), keep=False)["state"][0]["exp_avg"] is None
    fresh = torch.optim.AdamW(opt.param_groups[0]["params"], lr=1e-3)
    fresh.load_state_dict(fsdp.shard_optimizer_state(saved, fresh))
    for p in opt.param_groups[0]["params"]:
        for key in ("exp_avg", "exp_avg_sq"):
            value = fresh.state[p][key]
            assert fsdp.is_sharded(value) and value.placements == p.placements
            torch.testing.assert_close(value.full_tensor(), opt.state[p][key].full_tensor(), rtol=0, atol=0)
    bad = fsdp.gathered(opt.state_dict(), keep=True)
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"][:1]
    with pytest.raises(ValueError, match="optimiser state 'exp_avg' of shape .* does not match its sharded parameter"):
        fsdp.shard_optimizer_state(bad, fresh)
    fewer = {"state": saved["state"], "param_groups": [{**saved["param_groups"][0], "params": [0]}]}
    with pytest.raises(ValueError, match="optimiser state has 1 parameters, this run's optimiser 91"):
        fsdp.shard_optimizer_state(fewer, fresh)
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    assert fsdp.shard_optimizer_state(saved, plain) is saved  # nothing sharded: unchanged


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_plain_student_is_the_unsharded_copy(process_group, mode):
    plain_pair, plain_nets, plain_opt = make(mode, sharded=False)
    pair, nets, opt = make(mode, sharded=True)
    g_then_d(plain_nets, plain_opt)
    g_then_d(nets, opt)
    assert fsdp.plain_student(pair.student, ModelConfig(mode=mode, lora_rank=4), torch.float32, keep=False) is None
    copy = fsdp.plain_student(pair.student, ModelConfig(mode=mode, lora_rank=4), torch.float32, keep=True)
    want = plain_pair.student.state_dict()
    got = copy.state_dict()
    assert set(got) == set(want) and not any(fsdp.is_sharded(v) for v in got.values())
    for key, value in want.items():  # float32 rounding, as in the test above
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
    if mode == "lora":  # the export reads the adapters of the copy
        lora = comfy_lora_state_dict(copy.dit, torch.float32)
        ref = comfy_lora_state_dict(plain_pair.student.dit, torch.float32)
        assert set(lora) == set(ref) and len(lora) > 0


def test_describe_counts_the_weights_this_process_holds(process_group):
    pair, _, _ = make("full", sharded=True)
    total = sum(p.numel() for p in pair.student.parameters())
    assert fsdp.describe(pair.student, 1) == (f"FSDP: student sharded over 1 processes (3 blocks + root); "
                                              f"this process holds {total} of {total} student weights")


def test_accelerates_own_fsdp_launch_is_refused(monkeypatch, tmp_path):
    import accelerate
    from accelerate.utils import DistributedType

    from trainers.distill import make_accelerator

    class FsdpAccelerator:  # what `accelerate launch --use_fsdp` gives on GPUs
        def __init__(self, **kwargs):
            self.distributed_type = DistributedType.FSDP

    monkeypatch.setattr(accelerate, "Accelerator", FsdpAccelerator)
    cfg = config_from_dict(trainer_config(tmp_path, train={"distributed": "fsdp"}))
    with pytest.raises(ValueError, match="launched with accelerate's FSDP .* launch with --multi_gpu and set "
                                         "train.distributed: fsdp"):
        make_accelerator(cfg)
