"""Fold inference-mode BatchNormalization into the Conv/ConvTranspose/Gemm before it.

With a = gamma / sqrt(var + eps) per output channel c:

    W'[c] = W[c] * a[c]               (Conv: W is [M, C/g, k...], channel axis 0;
                                      ConvTranspose: [C, M/g, k...], per group along axis 1;
                                      Gemm: B is [K, N] (axis 1) or, with transB, [N, K] (axis 0))
    b'[c] = (beta_gemm * b[c] - mean[c]) * a[c] + beta[c]

The work is onnxscript's BatchNorm fusion rules (`fuse_batchnorm_into_{conv,conv_transpose,
gemm}`).  They fire only when the producer's output feeds nothing but the BatchNormalization,
the producer's weight and bias are constant initializers no other node reads (a shared
weight is left alone rather than copied), and the statistics are constants.  Gemm's `alpha`
stays on the node (it scales A·B before the per-column factor, so W' = W·a is still exact)
and its `beta` is folded into b'; grouped ConvTranspose folds per group.  The factor a is
computed in the weights' dtype (float32), the folded weight keeps the producer's weight name,
and, the one change made here, the fused node keeps the producer's name (upstream gives a
fresh one), because plans and user pins name nodes.
"""

from __future__ import annotations

from onnxscript.rewriter import RewritePass
from onnxscript.rewriter.rules.common import _fuse_batchnorm as upstream

from qcompile.pipeline import RemovingUnused

__all__ = ["fold_batchnorm_pass", "FOLD_BATCHNORM_RULES"]


class _KeepProducerName:
    def rewrite(self, op, x, inbound_out, batchnorm_out):
        fused = super().rewrite(op, x, inbound_out, batchnorm_out)  # type: ignore[misc]
        fused.producer().name = inbound_out.producer().name
        return fused


class _IntoConv(_KeepProducerName, upstream.FuseBatchNormIntoConv):
    pass


class _IntoConvTranspose(_KeepProducerName, upstream.FuseBatchNormIntoConvTranspose):
    pass


class _IntoGemm(_KeepProducerName, upstream.FuseBatchNormIntoGemm):
    pass


FOLD_BATCHNORM_RULES = (_IntoConv.rule(), _IntoConvTranspose.rule(), _IntoGemm.rule())


def fold_batchnorm_pass() -> RemovingUnused:
    """The three fusion rules, then the statistics they leave unused are dropped."""
    return RemovingUnused(RewritePass(list(FOLD_BATCHNORM_RULES)))
