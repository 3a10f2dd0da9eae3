"""Compile every kernel variant for a CUDA architecture without a GPU (Triton's frontend, its
LLVM passes and the bundled ptxas), so compiled-mode errors that the interpreter tolerates show
up in CPU CI. Usage: python compile_kernels.py SM (e.g. 90 for H100, 80 for A100); run it with
TRITON_INTERPRET unset. Prints one line per variant with its shared-memory use; the autotuned
tiles (kernels/autotune.py) as "autotune FAMILY KIND DTYPE CONFIG shared=S estimate=E limit=L",
every config that survives pruning for an A100-class (163 KiB) and a consumer (99 KiB) GPU.
Soft-capping (HAS_SOFTCAP) is compiled for the forward, the backward (with bias and dW) and the
row pass (lse, and the gradient in each dtype)."""

import sys

import triton
from lrdpo_fast.kernels import autotune
from lrdpo_fast.kernels.logprob_bwd import logprob_bwd_jit as logprob_bwd_kernel
from lrdpo_fast.kernels.logprob_fwd import logprob_fwd_jit as logprob_fwd_kernel
from lrdpo_fast.kernels.pair_loss import pair_loss_kernel
from lrdpo_fast.kernels.softmax_grad import softmax_grad_kernel
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BLOCKS = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_D=64)  # the variants' tile (autotuned ones below)


def compile_one(fn, signature, constexprs, target, num_warps, num_stages=None, quiet=False):
    options = {"num_warps": num_warps} | ({"num_stages": num_stages} if num_stages else {})
    kernel = triton.compile(ASTSource(fn, signature, constexprs), target=target, options=options)
    flags = {k: v for k, v in constexprs.items() if not k.startswith("BLOCK")}
    if not quiet:
        print(f"{fn.__name__} {flags} shared={kernel.metadata.shared}")
    return kernel.metadata.shared


def main(sm: int) -> None:
    target = GPUTarget("cuda", sm, 32)
    sigs = {}
    for dt, label_t in (("bf16", "i64"), ("fp16", "i32"), ("fp32", "i64")):
        prec = "ieee" if dt == "fp32" else "tf32"
        common = {"H": f"*{dt}", "W": f"*{dt}", "B": f"*{dt}", "LABELS": f"*{label_t}"}
        fwd = {
            **common,
            "MAX_OUT": "*fp32",
            "SUM_OUT": "*fp32",
            "LABEL_OUT": "*fp32",
            "SQ_OUT": "*fp32",
            "N": "i32",
            "V": "i32",
            "D": "i32",
            "stride_h": "i32",
            "stride_w": "i32",
            "n_splits": "i32",
            "inv_temp": "fp32",
            "softcap": "fp32",
            "ignore_index": "i32",
            "HAS_BIAS": "constexpr",
            "HAS_SOFTCAP": "constexpr",
            "UPCAST": "constexpr",
            "PRECISION": "constexpr",
            "BLOCK_N": "constexpr",
            "BLOCK_V": "constexpr",
            "BLOCK_D": "constexpr",
            "COMPUTE_SQ": "constexpr",
        }
        for has_bias, cap in ((False, False), (True, False), (False, True)):
            flags = dict(HAS_BIAS=has_bias, HAS_SOFTCAP=cap, UPCAST=False, PRECISION=prec, COMPUTE_SQ=has_bias)
            compile_one(logprob_fwd_kernel, fwd, dict(**flags, **BLOCKS), target, 8)
        bwd = {
            **common,
            "LSE": "*fp32",
            "GRAD": "*fp32",
            "DH": "*fp32",
            "DW": "*fp32",
            "DB": "*fp32",
            "N": "i32",
            "V": "i32",
            "D": "i32",
            "stride_h": "i32",
            "stride_w": "i32",
            "inv_temp": "fp32",
            "softcap": "fp32",
            "skip_below": "fp32",
            "HAS_BIAS": "constexpr",
            "HAS_SOFTCAP": "constexpr",
            "NEED_DH": "constexpr",
            "NEED_DW": "constexpr",
            "NEED_DB": "constexpr",
            "UPCAST": "constexpr",
            "PRECISION": "constexpr",
            "BLOCK_N": "constexpr",
            "BLOCK_V": "constexpr",
            "BLOCK_D": "constexpr",
        }
        sigs[dt] = (fwd, bwd, prec)
        for has_bias, need_w, cap in (
            (False, True, False),
            (True, True, False),
            (False, False, False),
            (True, True, True),
        ):
            compile_one(
                logprob_bwd_kernel,
                bwd,
                dict(
                    HAS_BIAS=has_bias,
                    HAS_SOFTCAP=cap,
                    NEED_DH=True,
                    NEED_DW=need_w,
                    NEED_DB=has_bias,
                    UPCAST=False,
                    PRECISION=prec,
                    **BLOCKS,
                ),
                target,
                8,
            )
    loss = {
        "LOGPS": "*fp32",
        "REF": "*fp32",
        "LENS": "*fp32",
        "LOSS": "*fp32",
        "DLOGPS": "*fp32",
        "P": "i32",
        "beta": "fp32",
        "alpha": "fp32",
        "gamma": "fp32",
        "smoothing": "fp32",
        "inv_pairs": "fp32",
        "LOSS_TYPE": "constexpr",
        "BLOCK": "constexpr",
    }
    for loss_type in range(5):
        compile_one(pair_loss_kernel, loss, dict(LOSS_TYPE=loss_type, BLOCK=128), target, 4)
    # every autotuned tile that a device of each family would try, for 16-bit and float32 inputs
    for fam, limit in (("big", autotune.A100_SMEM), ("small", autotune.CONSUMER_SMEM)):
        for dt, elem in (("bf16", 2), ("fp32", 4)):
            fwd, bwd, prec = sigs[dt]
            for kind, fn, sig, flags in (
                (
                    "fwd",
                    logprob_fwd_kernel,
                    fwd,
                    dict(HAS_BIAS=False, HAS_SOFTCAP=False, UPCAST=False, PRECISION=prec, COMPUTE_SQ=False),
                ),
                (
                    "bwd",
                    logprob_bwd_kernel,
                    bwd,
                    dict(
                        HAS_BIAS=False,
                        HAS_SOFTCAP=False,
                        NEED_DH=True,
                        NEED_DW=True,
                        NEED_DB=False,
                        UPCAST=False,
                        PRECISION=prec,
                    ),
                ),
            ):
                for cfg in autotune.fits(kind, limit, elem):
                    shared = compile_one(
                        fn, sig, {**flags, **cfg.kwargs}, target, cfg.num_warps, cfg.num_stages, quiet=True
                    )
                    tile = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_N", "BLOCK_V", "BLOCK_D"))
                    print(
                        f"autotune {fam} {kind} {dt} {tile}/w{cfg.num_warps}/s{cfg.num_stages} shared={shared} "
                        f"estimate={autotune.smem_estimate(kind, cfg, elem)} limit={limit}"
                    )
    # the chunked path's row pass (torch_backend.row_pass: BLOCK_V=2048, 8 warps): lse only, then
    # the in-place gradient in each input dtype, with and without the filter's block max
    row = {
        "Z": "*fp32",
        "GOUT": "*fp32",
        "LABELS": "*i64",
        "LSE": "*fp32",
        "LOGP": "*fp32",
        "G": "*fp32",
        "BLOCKMAX": "*fp32",
        "LSQ": "*fp32",
        "V": "i32",
        "stride_z": "i32",
        "stride_g": "i32",
        "inv_temp": "fp32",
        "softcap": "fp32",
        "COMPUTE_LSE": "constexpr",
        "WRITE_GRAD": "constexpr",
        "HAS_G": "constexpr",
        "TRACK_MAX": "constexpr",
        "HAS_SOFTCAP": "constexpr",
        "BLOCK_V": "constexpr",
        "COMPUTE_SQ": "constexpr",
    }
    for cap in (False, True):
        compile_one(
            softmax_grad_kernel,
            row,
            dict(
                COMPUTE_LSE=True,
                WRITE_GRAD=False,
                HAS_G=False,
                TRACK_MAX=False,
                HAS_SOFTCAP=cap,
                BLOCK_V=2048,
                COMPUTE_SQ=cap,
            ),
            target,
            8,
        )
    for dt in ("bf16", "fp16", "fp32"):
        for track, cap in ((False, False), (True, False), (False, True)):
            compile_one(
                softmax_grad_kernel,
                {**row, "GOUT": f"*{dt}"},
                dict(
                    COMPUTE_LSE=False,
                    WRITE_GRAD=True,
                    HAS_G=True,
                    TRACK_MAX=track,
                    HAS_SOFTCAP=cap,
                    BLOCK_V=2048,
                    COMPUTE_SQ=False,
                ),
                target,
                8,
            )


if __name__ == "__main__":
    main(int(sys.argv[1]))
