"""ControlNet latency overhead per sampling step, ours vs diffusers (issue 7).

    .venv/bin/python bench/bench_controlnet.py                  # stream mode, 4 rounds
    .venv/bin/python bench/bench_controlnet.py --mode forward --repeats 2

Sprint 1.6B width (2240) with a reduced base depth (8, so 7 copied blocks fit), a 7-block ControlNet,
1024 px (32x32 latent), 300 caption tokens, CPU fp32. One step = one DiT forward. Ours and diffusers
share the same weight tensors (ours is assigned diffusers' parameters); runs alternate in one process.
stream mode times the extra work of a controlled step on its own (the residual computation);
forward mode times whole plain and controlled forwards and reports the paired per-round difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import alternate, machine, median  # noqa: E402
from sana_sprint_core.controlnet import ControlNetConfig, SanaControlNet  # noqa: E402
from sana_sprint_core.dit import BlockInputs, SanaSprintDiT  # noqa: E402
from sana_sprint_core.dit_config import PRESETS  # noqa: E402
from sana_sprint_core.dit_keys import diffusers_to_ours  # noqa: E402
from sana_sprint_core.dit_layers import mask_to_bias  # noqa: E402


def _diffusers_kwargs(cfg) -> dict:
    return dict(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                num_cross_attention_heads=cfg.cross_heads, cross_attention_head_dim=cfg.cross_head_dim,
                cross_attention_dim=cfg.hidden_size, caption_channels=cfg.caption_channels, sample_size=32,
                interpolation_scale=None)


def build(layers: int, blocks: int):
    """(diffusers transformer, diffusers ControlNet, our DiT, our diffusers- and nvlabs-wired ControlNets)."""
    import diffusers

    cfg = PRESETS["sprint_1600m"].replace(num_layers=layers)
    tf = diffusers.SanaTransformer2DModel(**_diffusers_kwargs(cfg), num_layers=layers, guidance_embeds=True,
                                          qk_norm="rms_norm_across_heads").eval()
    cn = diffusers.SanaControlNetModel(**_diffusers_kwargs(cfg), num_layers=blocks).eval()
    with torch.no_grad():  # non-zero projections, so the parity check below means something
        for proj in (cn.input_block, *cn.controlnet_blocks):
            proj.weight.normal_(0, 0.02)
    dit = SanaSprintDiT(cfg, device="meta")
    dit.load_state_dict(tf.state_dict(), strict=True, assign=True)
    cn_cfg = cfg.replace(qk_norm=False)
    ours = {}
    for wiring in ("diffusers", "nvlabs"):
        model = SanaControlNet(ControlNetConfig(cn_cfg, blocks, wiring), device="meta")
        state = {k: v for k, v in diffusers_to_ours(cn.state_dict()).items() if k in model.state_dict()}
        model.load_state_dict(state, strict=True, assign=True)  # shares diffusers' tensors
        ours[wiring] = model.eval()
    return tf, cn, dit.eval(), ours


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size/32)")
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--mode", choices=["stream", "forward"], default="stream",
                    help="stream: time the ControlNet's extra work of a step on its own (default); forward: "
                         "time whole plain and controlled forwards and take the paired difference")
    args = ap.parse_args()
    torch.manual_seed(0)
    tf, cn, dit, ours = build(args.layers, args.blocks)
    side = args.size // 32
    x, control = torch.randn(1, 32, side, side), torch.randn(1, 32, side, side)
    ctx = torch.randn(1, args.tokens, dit.config.caption_channels)
    mask = torch.ones(1, args.tokens, dtype=torch.int64)
    tau, g = torch.tensor([0.8]), torch.tensor([4.5])
    inputs = (x, tau, ctx, mask, g, control)
    with torch.inference_mode():
        diff = (forward_fns(tf, cn, dit, ours, inputs)["ours + ControlNet (diffusers wiring)"]()
                - forward_fns(tf, cn, dit, ours, inputs)["diffusers + ControlNet"]()).abs().max().item()
        fns = stream_fns(cn, dit, ours, inputs) if args.mode == "stream" else forward_fns(tf, cn, dit, ours, inputs)
        times = alternate(fns, repeats=args.repeats)
    report(args, times, diff)


def forward_fns(tf, cn, dit, ours, inputs) -> dict:
    """Whole forwards (one sampling step each): plain and controlled, ours and diffusers."""
    x, tau, ctx, mask, g, control = inputs

    def ours_with(wiring):
        return lambda: dit(x, tau, ctx, mask, g, **ours[wiring].dit_kwargs(dit, x, tau, ctx, mask, control))

    def ref_control():
        return tf(x, encoder_hidden_states=ctx, timestep=tau, guidance=g * 0.1, encoder_attention_mask=mask,
                  controlnet_block_samples=_ref_samples(cn, inputs), return_dict=False)[0]

    return {
        "ours plain": lambda: dit(x, tau, ctx, mask, g),
        "ours + ControlNet (diffusers wiring)": ours_with("diffusers"),
        "ours + ControlNet (nvlabs wiring)": ours_with("nvlabs"),
        "diffusers plain": lambda: tf(x, encoder_hidden_states=ctx, timestep=tau, guidance=g * 0.1,
                                      encoder_attention_mask=mask, return_dict=False)[0],
        "diffusers + ControlNet": ref_control,
    }


def _ref_samples(cn, inputs):
    x, tau, ctx, mask, _, control = inputs
    return cn(x, encoder_hidden_states=ctx, timestep=tau, controlnet_cond=control, encoder_attention_mask=mask,
              return_dict=False)[0]


def stream_fns(cn, dit, ours, inputs) -> dict:
    """The extra work of a controlled step alone: computing the residuals (the additions are 7 adds).

    nvlabs: the hook the DiT calls after block 0, fed a block-0 output and the block inputs.
    """
    x, tau, ctx, mask, g, control = inputs
    t0, _ = dit.embed_conditions(tau, g, x.dtype)
    block_inputs = BlockInputs(dit.caption_norm(dit.caption_projection(ctx)), mask_to_bias(mask, x.dtype),
                               t0, (x.shape[-2], x.shape[-1]))
    h0 = torch.randn(1, x.shape[-2] * x.shape[-1], dit.config.hidden_size)

    def nvlabs():
        return ours["nvlabs"].dit_kwargs(dit, x, tau, ctx, mask, control)["block_hook"](0, h0, block_inputs)

    return {
        "ours, diffusers wiring": lambda: ours["diffusers"].dit_kwargs(dit, x, tau, ctx, mask, control),
        "ours, nvlabs wiring": nvlabs,
        "diffusers": lambda: _ref_samples(cn, inputs),
    }


def report(args, times: dict[str, list[float]], diff: float) -> None:
    """Print the markdown table: per-step ControlNet overhead per variant, ratio to diffusers."""
    if args.mode == "forward":  # paired per-round differences, controlled - plain
        plain = {"ours, diffusers wiring": "ours plain", "ours, nvlabs wiring": "ours plain",
                 "diffusers": "diffusers plain"}
        full = {"ours, diffusers wiring": "ours + ControlNet (diffusers wiring)",
                "ours, nvlabs wiring": "ours + ControlNet (nvlabs wiring)", "diffusers": "diffusers + ControlNet"}
        for name, values in times.items():
            print(f"forward {name}: median {median(values):.2f} s")
        times = {k: [a - b for a, b in zip(times[full[k]], times[plain[k]])] for k in plain}
    print(f"machine: {machine()}")
    print(f"config: width 2240, {args.layers} base layers, {args.blocks} ControlNet blocks, {args.size // 32}x"
          f"{args.size // 32} latent, {args.tokens} tokens, fp32, mode {args.mode}, {args.repeats} alternating "
          f"rounds after 1 warm-up; max |ours - diffusers| (controlled forward) = {diff:.2e}")
    print("| ControlNet overhead per step | median (s) | rounds (s) | ratio to diffusers |")
    print("|---|---|---|---|")
    ref = statistics.median(times["diffusers"])
    for name, values in times.items():
        m = statistics.median(values)
        print(f"| {name} | {m:.2f} | {', '.join(f'{v:.2f}' for v in values)} | {m / ref:.2f} |")


if __name__ == "__main__":
    main()
