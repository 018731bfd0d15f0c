"""The ``gpu.*`` kinds: the CPU kernels with ``storage = "gpu"``.

Every kernel computes through ``context.xp``, which the registry sets to cupy
for GPU storage, so each twin only renames the kind. The default registry
registers them on first use, and only where a GPU is usable
(``shmpiped.shm.device.gpu_status``); elsewhere asking for one says what is
missing. There is no ``gpu.reduce`` (spec 10.3).
"""

from __future__ import annotations

from shmpiped.kernels import centroids, custom_operation, diagnostics, elementwise, layout, linear, tomography


class GpuCopyKernel(elementwise.CopyKernel):
    kind, storage = "gpu.copy", "gpu"


class GpuScaleKernel(elementwise.ScaleKernel):
    kind, storage = "gpu.scale", "gpu"


class GpuAddConstantKernel(elementwise.AddConstantKernel):
    kind, storage = "gpu.add_constant", "gpu"


class GpuElementwiseAddKernel(elementwise.ElementwiseAddKernel):
    kind, storage = "gpu.elementwise_add", "gpu"


class GpuElementwiseSubtractKernel(elementwise.ElementwiseSubtractKernel):
    kind, storage = "gpu.elementwise_subtract", "gpu"


class GpuElementwiseMultiplyKernel(elementwise.ElementwiseMultiplyKernel):
    kind, storage = "gpu.elementwise_multiply", "gpu"


class GpuElementwiseDivideKernel(elementwise.ElementwiseDivideKernel):
    kind, storage = "gpu.elementwise_divide", "gpu"


class GpuScaleOffsetKernel(elementwise.ScaleOffsetKernel):
    kind, storage = "gpu.scale_offset", "gpu"


class GpuFlattenKernel(layout.FlattenKernel):
    kind, storage = "gpu.flatten", "gpu"


class GpuConcatenateKernel(layout.ConcatenateKernel):
    kind, storage = "gpu.concatenate", "gpu"


class GpuAffineTransformKernel(linear.AffineTransformKernel):
    kind, storage = "gpu.affine_transform", "gpu"


class GpuLeakyIntegratorKernel(linear.LeakyIntegratorKernel):
    kind, storage = "gpu.leaky_integrator", "gpu"


class GpuCustomOperationKernel(custom_operation.CustomOperationKernel):
    kind, storage = "gpu.custom_operation", "gpu"


class GpuSpotCentroidKernel(centroids.SpotCentroidKernel):
    kind, storage = "gpu.spot_centroid", "gpu"


class GpuShackHartmannCentroidKernel(centroids.ShackHartmannCentroidKernel):
    kind, storage = "gpu.shack_hartmann_centroid", "gpu"


class GpuTipTiltControllerKernel(centroids.TipTiltControllerKernel):
    kind, storage = "gpu.tip_tilt_controller", "gpu"


class GpuTomographicControllerKernel(tomography.TomographicControllerKernel):
    kind, storage = "gpu.tomographic_controller", "gpu"


class GpuRaiseErrorKernel(diagnostics.RaiseErrorKernel):
    kind, storage = "gpu.raise_error", "gpu"


GPU_KERNELS = (
    GpuCopyKernel,
    GpuScaleKernel,
    GpuAddConstantKernel,
    GpuElementwiseAddKernel,
    GpuElementwiseSubtractKernel,
    GpuElementwiseMultiplyKernel,
    GpuElementwiseDivideKernel,
    GpuScaleOffsetKernel,
    GpuFlattenKernel,
    GpuConcatenateKernel,
    GpuAffineTransformKernel,
    GpuLeakyIntegratorKernel,
    GpuCustomOperationKernel,
    GpuSpotCentroidKernel,
    GpuShackHartmannCentroidKernel,
    GpuTipTiltControllerKernel,
    GpuTomographicControllerKernel,
    GpuRaiseErrorKernel,
)

