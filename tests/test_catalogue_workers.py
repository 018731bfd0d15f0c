"""Every CPU kernel of the catalogue run by a real worker process, against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import wait_for

RNG = np.random.default_rng(11)
IMAGE = (RNG.random((8, 8)) * 10).astype(np.float32)
SPOTS = np.zeros((8, 8), np.float32)
SPOTS[1, 2] = SPOTS[5, 6] = 4.0
VECTOR = RNG.standard_normal(6).astype(np.float32)
OTHER = (RNG.random(6) + 0.5).astype(np.float32)
MATRIX = RNG.standard_normal((3, 6)).astype(np.float32)
OFFSET = RNG.standard_normal(3).astype(np.float32)
TT_MATRIX = np.array([[1.0, 0.5], [0.0, 2.0]], np.float32)
TT_BIAS = np.array([0.1, -0.1], np.float32)


def _spot(image):
    h, w = image.shape
    weights = np.where(image > 0, image, 0).astype(np.float64)
    total = weights.sum()
    rows, cols = np.indices(image.shape)
    return np.array([(weights * rows).sum() / total - (h - 1) / 2, (weights * cols).sum() / total - (w - 1) / 2])


def _tiles(image, tile):
    out = np.zeros((image.shape[0] // tile, image.shape[1] // tile, 2))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = image[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile].astype(np.float64)
            if block.sum() > 0:
                rows, cols = np.indices(block.shape)
                out[i, j] = [(block * rows).sum() / block.sum() - (tile - 1) / 2,
                             (block * cols).sum() / block.sum() - (tile - 1) / 2]
    return out


# name: (kernel entry, {input stream: value}, output shape, expected)
CASES = {
    "copy": ({"kind": "cpu.copy"}, {"v": VECTOR}, (6,), VECTOR),
    "scale": ({"kind": "cpu.scale", "parameters": {"factor": -1.5}}, {"v": VECTOR}, (6,), VECTOR * -1.5),
    "add_constant": ({"kind": "cpu.add_constant", "parameters": {"constant": 3}}, {"v": VECTOR}, (6,), VECTOR + 3),
    "add": ({"kind": "cpu.elementwise_add", "auxiliary": ["w"]}, {"v": VECTOR, "w": OTHER}, (6,), VECTOR + OTHER),
    "subtract": ({"kind": "cpu.elementwise_subtract", "auxiliary": ["w"]}, {"v": VECTOR, "w": OTHER}, (6,),
                 VECTOR - OTHER),
    "multiply": ({"kind": "cpu.elementwise_multiply", "auxiliary": ["w"]}, {"v": VECTOR, "w": OTHER}, (6,),
                 VECTOR * OTHER),
    "divide": ({"kind": "cpu.elementwise_divide", "auxiliary": ["w"]}, {"v": VECTOR, "w": OTHER}, (6,),
               VECTOR / OTHER),
    "scale_offset": ({"kind": "cpu.scale_offset", "auxiliary": ["w"], "parameters": {"gain": 2.0}},
                     {"v": VECTOR, "w": OTHER}, (6,), 2.0 * VECTOR - OTHER),
    "flatten": ({"kind": "cpu.flatten"}, {"img": IMAGE}, (64,), IMAGE.ravel()),
    "reduce": ({"kind": "cpu.reduce", "parameters": {"operation": "max"}}, {"v": VECTOR}, (1,), [VECTOR.max()]),
    "affine": ({"kind": "cpu.affine_transform", "auxiliary": ["A", "b"]}, {"v": VECTOR, "A": MATRIX, "b": OFFSET},
               (3,), MATRIX @ VECTOR + OFFSET),
    "integrator": ({"kind": "cpu.leaky_integrator", "parameters": {"leak": 0.5, "gain": 2.0}}, {"v": VECTOR},
                   (6,), 2.0 * VECTOR),
    "custom": ({"kind": "cpu.custom_operation", "auxiliary": {"k": "w"}, "operation": "clip(input * k, -0.5, 0.5)"},
               {"v": VECTOR, "w": OTHER}, (6,), np.clip(VECTOR * OTHER, -0.5, 0.5)),
    "spot": ({"kind": "cpu.spot_centroid"}, {"spots": SPOTS}, (2,), _spot(SPOTS)),
    "shack_hartmann": ({"kind": "cpu.shack_hartmann_centroid", "parameters": {"tile_size": 4}}, {"img": IMAGE},
                       (2, 2, 2), _tiles(IMAGE, 4)),
    "tip_tilt": ({"kind": "cpu.tip_tilt_controller", "auxiliary": ["M", "tb"],
                  "parameters": {"leak": 0.0, "control_gain": 1.0}},
                 {"spots": SPOTS, "M": TT_MATRIX, "tb": TT_BIAS}, (2,), TT_MATRIX @ _spot(SPOTS) + TT_BIAS),
}

SHAPES = {"v": (6,), "w": (6,), "img": (8, 8), "spots": (8, 8), "A": (3, 6), "b": (3,), "M": (2, 2), "tb": (2,)}


@pytest.mark.filterwarnings("ignore:kernel kind 'cpu.tip_tilt_controller' is deprecated")
def test_every_kernel_in_a_real_worker(namespace, manager_factory):
    streams = [{"name": name, "shape": list(shape), "dtype": "float32"} for name, shape in SHAPES.items()]
    kernels = []
    for name, (entry, inputs, out_shape, _) in CASES.items():
        trigger = next(iter(inputs))
        streams.append({"name": f"out_{name}", "shape": list(out_shape), "dtype": "float32"})
        kernels.append({"name": name, "input": trigger, "output": f"out_{name}", **entry})
    m = manager_factory({"namespace": namespace, "shared_memory": streams, "kernels": kernels})
    m.build()
    m.start()
    for name in ("w", "A", "b", "M", "tb"):  # auxiliaries first: they never trigger
        m.get_stream(name).write(dict(w=OTHER, A=MATRIX, b=OFFSET, M=TT_MATRIX, tb=TT_BIAS)[name])
    for name in ("v", "img", "spots"):
        m.get_stream(name).write(dict(v=VECTOR, img=IMAGE, spots=SPOTS)[name])
    for name, (_, _, _, expected) in CASES.items():
        out = m.get_stream(f"out_{name}")
        wait_for(lambda out=out: out.count >= 1, timeout=20)
        np.testing.assert_allclose(out.read(), np.asarray(expected, np.float32), rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    status = m.status()
    assert status["summary"]["failed_workers"] == 0
    assert len(status["workers"]) == len(CASES)
