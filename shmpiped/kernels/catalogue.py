"""The built-in plugin classes the default registry starts from (spec 10.2 and 8)."""

from __future__ import annotations

from shmpiped.kernels.centroids import (
    CentroidKernel,
    ShackHartmannCentroidKernel,
    SpotCentroidKernel,
    TipTiltControllerKernel,
)
from shmpiped.kernels.custom_operation import CustomOperationKernel
from shmpiped.kernels.diagnostics import RaiseErrorKernel
from shmpiped.kernels.elementwise import (
    AddConstantKernel,
    CopyKernel,
    ElementwiseAddKernel,
    ElementwiseDivideKernel,
    ElementwiseMultiplyKernel,
    ElementwiseSubtractKernel,
    ScaleKernel,
    ScaleOffsetKernel,
)
from shmpiped.kernels.layout import ConcatenateKernel, FlattenKernel
from shmpiped.kernels.linear import AffineTransformKernel, LeakyIntegratorKernel
from shmpiped.kernels.null_sink import NullSink
from shmpiped.kernels.reduce import ReduceKernel
from shmpiped.kernels.tomography import TomographicControllerKernel

CPU_KERNELS = (
    CopyKernel,
    ScaleKernel,
    AddConstantKernel,
    ElementwiseAddKernel,
    ElementwiseSubtractKernel,
    ElementwiseMultiplyKernel,
    ElementwiseDivideKernel,
    ScaleOffsetKernel,
    FlattenKernel,
    ConcatenateKernel,
    ReduceKernel,
    AffineTransformKernel,
    LeakyIntegratorKernel,
    CustomOperationKernel,
    SpotCentroidKernel,
    ShackHartmannCentroidKernel,
    CentroidKernel,
    TipTiltControllerKernel,
    TomographicControllerKernel,
    RaiseErrorKernel,
)

BUILTIN_SINKS = (NullSink,)

#: Built-in sources, resolved on first use. shmpiped/synthetic.py provides them;
#: until that module exists, resolving one raises ImportError.
BUILTIN_LAZY_SOURCES = {
    "synthetic.array": "shmpiped.sources.array_source:SyntheticArraySource",
    "synthetic.frame_set": "shmpiped.sources.frame_set_source:SyntheticFrameSetSource",
    "pyshmem.source": "shmpiped.pyshmem_bridge:PyshmemSource",
}

#: Built-in sinks resolved on first use (pyshmem is optional: imported only by pipelines that use it).
BUILTIN_LAZY_SINKS = {
    "pyshmem.sink": "shmpiped.pyshmem_bridge:PyshmemSink",
}
