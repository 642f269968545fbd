"""Schemes this host cannot serve are refused before any work."""

import pytest

from serving import hardware
from serving.quantize import SchemeNotServable, check_servable, quantize, recipe_for
from serving.quantize_gpu import SCHEME_RECIPES, job_spec

pytestmark = pytest.mark.skipif(hardware.gpu_count() > 0, reason="this host has a GPU: GPU schemes are allowed")


@pytest.mark.parametrize("scheme", ["w4a16", "w4a16-gptq", "fp8-dynamic"])
def test_gpu_schemes_are_refused_on_a_cpu_host_naming_scheme_and_hardware(scheme, tmp_path):
    with pytest.raises(SchemeNotServable) as error:
        quantize(tmp_path / "does-not-matter", tmp_path / "out", recipe_for(scheme))
    message = str(error.value)
    # The host as serving.hardware reads it (CPU features differ between machines: AVX2, AVX-512).
    assert scheme in message and "GPU" in message and hardware.describe() in message
    assert not (tmp_path / "out").exists()


def test_an_unknown_scheme_lists_the_known_ones():
    with pytest.raises(SchemeNotServable, match="w8a8-int8"):
        check_servable("int3")


def test_gptq_jobs_carry_calibration_text_and_rtn_jobs_do_not(tmp_path):
    texts = ["Q: What is 1 plus 2?\nA: 3"]
    assert job_spec(tmp_path, tmp_path / "o", "w4a16-gptq", texts)["calibration_texts"] == texts
    assert job_spec(tmp_path, tmp_path / "o", "fp8-dynamic", texts)["calibration_texts"] == []
    assert set(SCHEME_RECIPES) == {"w4a16", "w4a16-gptq", "fp8-dynamic"}
