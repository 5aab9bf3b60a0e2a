import time

from ryzjupyter.engine.profiling import Profiler
from ryzjupyter.jupyter.widgets import ProfileDisplay, profile_html, profile_view


def _profile(p):
    p.begin()
    p.stage("prefill")
    with p.phase("matmul"):
        time.sleep(0.002)
    p.stage("decode")
    with p.phase("sampling"):
        time.sleep(0.001)
    p.token()
    return p.end(n_prompt=3)


def test_profile_html_and_display_bundle():
    prof = _profile(Profiler(enabled=True))
    h = profile_html(prof, "tiny")
    for name in ("matmul", "sampling", "python"):
        assert f"data-phase='{name}'" in h
    assert "prefill ms" in h and "decode ms" in h and "memory" in h
    # a reply shorter than a second: its time in ms, not "0.004 s"
    import re
    assert re.search(r"1 tokens in \d+(\.\d)? ms", h), h[:400]
    b = ProfileDisplay(prof)._repr_mimebundle_()
    assert b["text/plain"] == prof.table() and "ryz-profile" in b["text/html"]
    assert "no generation" in profile_html(None)


def test_profile_view_follows_generations():
    p = Profiler(enabled=True)
    v = profile_view(profiler=p)
    assert "no generation" in v.html.value
    prof = _profile(p)
    assert v.profile is prof and "matmul" in v.html.value
    v.close()
    _profile(p)
    assert v.profile is prof and p.listeners == []
