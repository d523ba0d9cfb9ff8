"""ONNX Runtime sessions: IOBinding gives the plain path's probabilities, providers report what really runs,
session options reach the session, warm-up prepares every batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from linewatch.config import LineConfig
from linewatch.emulator.parts import PartEmulator
from linewatch.model.onnx import Model, ModelError
from linewatch.model.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    BoundRunner,
    SessionSettings,
    batch_sizes,
    missing_libraries,
    open_session,
    provider_attempts,
)
from tests.conftest import REFERENCE_MODEL
from tests.test_adapters import anomalib_model, yolo_det_model


def _frames(n: int, seed: int = 3) -> np.ndarray:
    emu = PartEmulator(seed=seed, defect_rate=0.5)
    return np.stack([emu.render(i).pixels for i in range(n)])


def _plain(**kw: object) -> SessionSettings:
    return SessionSettings(providers="cpu", io_binding="never", **kw)  # type: ignore[arg-type]


def _bound(**kw: object) -> SessionSettings:
    return SessionSettings(providers="cpu", io_binding="always", **kw)  # type: ignore[arg-type]


def test_io_binding_gives_the_plain_paths_probabilities() -> None:
    plain = Model(REFERENCE_MODEL, settings=_plain())
    bound = Model(REFERENCE_MODEL, settings=_bound(batch_sizes=(1, 2, 4)))
    assert bound._bound is not None and plain._bound is None
    frames = _frames(7)
    results = []
    for n in (1, 3, 4, 7, 1):  # prepared sizes, others, and a size again (its buffers reused)
        got = bound.run(frames[:n])
        np.testing.assert_array_equal(got, plain.run(frames[:n]))
        results.append(got)
    np.testing.assert_array_equal(results[0], results[-1])  # the later runs did not overwrite a returned array
    assert len({r[0, 1] for r in results}) == 1 and results[1][1:, 1].std() > 0  # really different frames


def test_batch_buffer_is_the_input_without_a_copy() -> None:
    model = Model(REFERENCE_MODEL, settings=_bound())
    plain = Model(REFERENCE_MODEL, settings=_plain())
    frames = _frames(3)
    buf = model.batch_buffer(3)
    assert buf.shape == (3, 256, 256) and buf.dtype == np.uint8
    buf[:] = frames
    assert model.batch_buffer(3) is not buf and np.shares_memory(model.batch_buffer(3), buf)  # same memory, reused
    np.testing.assert_array_equal(model.run(buf), plain.run(frames))
    buf[:] = frames[::-1]
    np.testing.assert_array_equal(model.run(buf), plain.run(frames[::-1]))
    assert plain.batch_buffer(3) is plain.batch_buffer(3)  # the plain path reuses its buffer too


def test_auto_binds_on_a_gpu_only() -> None:
    assert Model(REFERENCE_MODEL, providers="cpu")._bound is None
    assert [SessionSettings(io_binding=m).binds(d) for m in ("auto", "always", "never") for d in ("cpu", "cuda")] == [
        False, True, True, True, False, False]


def test_padded_batches_as_on_a_gpu_drop_the_padding_rows() -> None:
    """The GPU pads a batch up to the next prepared size; run that path here on CPU buffers."""
    settings = SessionSettings(providers="cpu", batch_sizes=(1, 4, 8))
    opened = open_session(REFERENCE_MODEL.read_bytes(), settings, "test")
    runner = BoundRunner(opened, settings.batch_sizes, pad=True)
    assert [runner.padded(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 4, 4, 4, 8, 8, 9]
    plain = Model(REFERENCE_MODEL, settings=_plain())
    frames = _frames(9)
    for n in (3, 5, 9):
        (got,) = runner.run({"image": frames[:n]})
        np.testing.assert_array_equal(got, plain.run(frames[:n]))
    assert sorted(s.host["image"].shape[0] for s in runner._slots.values()) == [4, 8, 9]


@pytest.mark.parametrize("build", [anomalib_model, yolo_det_model], ids=["anomalib", "yolo-detect"])
def test_adapted_models_bind_the_same(tmp_path: Path, build) -> None:  # type: ignore[no-untyped-def]
    path = build(tmp_path)
    frames = _frames(2)
    got = Model(path, settings=_bound()).run(frames)
    np.testing.assert_array_equal(got, Model(path, settings=_plain()).run(frames))


def test_warm_up_prepares_every_batch_size() -> None:
    model = Model(REFERENCE_MODEL, settings=_bound(batch_sizes=batch_sizes(6)))
    assert model.settings.batch_sizes == (1, 2, 4, 6)
    assert model._bound is not None and not model._bound._slots
    model.warm_up()
    assert sorted(s.n for s in model._bound._slots.values()) == [1, 2, 4, 6]
    assert all(s.runs == 1 for s in model._bound._slots.values())


def test_batch_sizes() -> None:
    assert batch_sizes(1) == (1,) and batch_sizes(8) == (1, 2, 4, 8) and batch_sizes(12) == (1, 2, 4, 8, 12)


def test_session_options_reach_the_session(tmp_path: Path) -> None:
    settings = SessionSettings(providers="cpu", intra_op_threads=2, allow_spinning=False, graph_optimization="basic",
                               optimized_cache_dir=tmp_path / "cache")
    model = Model(REFERENCE_MODEL, settings=settings)
    opts = model.session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".onnx"]  # the optimised graph, kept
    spinning = Model(REFERENCE_MODEL, settings=SessionSettings(providers="cpu", allow_spinning=True))
    assert spinning.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spinning.session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_line_config_maps_onto_session_settings(tmp_path: Path) -> None:
    cfg = LineConfig(data_dir=tmp_path, infer={"max_batch": 8},
                     model={"providers": "tensorrt", "fp16": True, "cache_optimized_graph": True})
    s = SessionSettings.for_line(cfg)
    assert (s.providers, s.fp16, s.batch_sizes) == ("tensorrt", True, (1, 2, 4, 8))
    assert s.optimized_cache_dir == tmp_path / "model-cache" and s.engine_cache_dir == tmp_path / "model-cache" / "trt"
    assert SessionSettings.for_line(LineConfig(data_dir=tmp_path)).optimized_cache_dir is None


def test_cpu_and_auto_report_what_runs() -> None:
    assert provider_attempts("cpu") == [[CPU]]
    auto = provider_attempts("auto")
    assert auto[-1] == [CPU]
    assert all(CUDA not in a for a in auto) == bool(missing_libraries(CUDA))  # GPU only where its libraries load
    model = Model(REFERENCE_MODEL, providers="auto")
    assert model.providers == model.session.get_providers()
    if missing_libraries(CUDA):
        assert model.providers == [CPU] and model.fallbacks == []  # nothing was tried, nothing to alarm about
    else:
        assert model.providers[0] in (TENSORRT, CUDA)


@pytest.mark.parametrize(("request_", "provider"), [("cuda", CUDA), ("tensorrt", TENSORRT)])
def test_a_demanded_gpu_provider_runs_or_refuses_with_what_is_missing(request_: str, provider: str) -> None:
    missing = missing_libraries(provider)
    if provider not in ort.get_available_providers():
        with pytest.raises(ModelError, match=f"{request_} requested but this onnxruntime build has no"):
            Model(REFERENCE_MODEL, providers=request_)
    elif missing:
        refused = f"{request_} requested but {provider} (did not load|failed to start)"
        with pytest.raises(ModelError, match=refused) as err:
            Model(REFERENCE_MODEL, providers=request_)
        assert missing[0] in str(err.value)  # names the library a line engineer has to install
    else:
        assert Model(REFERENCE_MODEL, providers=request_).providers[0] == provider


def test_unknown_provider_request() -> None:
    with pytest.raises(ValueError, match="unknown request 'tpu'"):
        provider_attempts("tpu")


def test_auto_falls_back_from_a_gpu_provider_that_does_not_really_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a machine with a GPU driver but without cuDNN sees: ORT is asked for CUDA, prints an error
    and quietly runs on the CPU. Here the real ORT is asked for CUDA (its libraries are missing)."""
    if not missing_libraries(CUDA) or CUDA not in ort.get_available_providers():
        pytest.skip("CUDA really loads here (or is not built in): the silent fallback cannot happen")
    import linewatch.model.runtime as runtime

    monkeypatch.setattr(runtime, "provider_attempts", lambda request: [[CUDA, CPU], [CPU]])
    model = Model(REFERENCE_MODEL, providers="auto")
    assert model.providers == [CPU] == model.session.get_providers()
    assert len(model.fallbacks) == 1 and model.fallbacks[0].startswith(f"{CUDA} did not load (missing ")
    np.testing.assert_array_equal(model.run(_frames(2)), Model(REFERENCE_MODEL, settings=_plain()).run(_frames(2)))
