"""The controls panel is bound both ways to the magics' settings."""
import pytest
import ipywidgets as W

from ryzjupyter.jupyter.widgets import controls_panel
from ryzjupyter.models import bundled_names

from widget_helpers import FakeMagics, FakeRegistry


def test_slider_sets_setting_and_setting_moves_slider(magics, update):
    p = controls_panel(magics, registry=FakeRegistry())
    t = p.controls["temperature"]
    assert isinstance(t, W.FloatSlider) and t.value == pytest.approx(0.8)
    update(t, value=0.3)                                    # the user moves the slider
    assert magics.temperature == pytest.approx(0.3)
    magics.temperature = 1.25                               # %config RyzMagics.temperature = 1.25
    assert t.value == pytest.approx(1.25)
    assert t.get_state()["value"] == pytest.approx(1.25)    # what the browser is sent


@pytest.mark.parametrize("name,new", [("max_new_tokens", 64), ("top_k", 7), ("top_p", 0.5),
                                      ("min_p", 0.2), ("repetition_penalty", 1.3),
                                      ("stream", False), ("chat", True), ("show_stats", False)])
def test_every_control_both_ways(magics, update, name, new):
    p = controls_panel(magics, registry=FakeRegistry())
    w = p.controls[name]
    update(w, value=new)
    assert getattr(magics, name) == pytest.approx(new)
    back = type(new)(not new) if isinstance(new, bool) else new + (1 if isinstance(new, int) else 0.05)
    setattr(magics, name, back)
    assert w.value == pytest.approx(back)


def test_value_outside_slider_range_widens_slider_not_clamped(magics):
    p = controls_panel(magics, registry=FakeRegistry())
    magics.temperature = 5.0                                # slider max is 2
    assert magics.temperature == 5.0                        # not clamped back by the link
    assert p.controls["temperature"].value == 5.0 and p.controls["temperature"].max >= 5.0
    magics.max_new_tokens = 5000
    assert magics.max_new_tokens == 5000 and p.controls["max_new_tokens"].value == 5000


def test_seed_text_none_and_errors(magics, update):
    p = controls_panel(magics, registry=FakeRegistry())
    s = p.controls["seed"]
    assert s.value == ""
    update(s, value="42")
    assert magics.seed == 42
    magics.seed = None
    assert s.value == ""
    update(s, value="abc")                                  # refused: reported, snaps back
    assert magics.seed is None and s.value == ""
    assert "seed must be a whole number" in p.status.value
    update(s, value="-3")                                   # the trait's own validator refuses
    assert magics.seed is None and s.value == "" and "must be &gt;= 0" in p.status.value
    update(s, value="7")                                    # a good value clears the message
    assert magics.seed == 7 and p.status.value == ""


def test_system_prompt_empty_is_none(magics, update):
    p = controls_panel(magics, registry=FakeRegistry())
    w = p.controls["system"]
    update(w, value="You are terse.")
    assert magics.system == "You are terse."
    update(w, value="   ")
    assert magics.system is None
    magics.system = "Be kind."
    assert w.value == "Be kind."


def test_optional_features_appear_only_when_the_trait_exists(magics):
    from traitlets import Bool
    p = controls_panel(magics, registry=FakeRegistry())
    assert "speculative" not in p.controls and "recycling" not in p.controls

    class WithFeatures(FakeMagics):
        speculative = Bool(False)
        recycling = Bool(False)

    m = WithFeatures()
    p = controls_panel(m, registry=FakeRegistry())
    p.controls["recycling"].value = True
    assert m.recycling is True


def test_model_dropdown_lists_loaded_and_bundled_and_switches(magics, update):
    reg = FakeRegistry(["a", "b"])
    p = controls_panel(magics, registry=reg)
    values = [v for _, v in p.model.options]
    assert values[:2] == ["a", "b"]
    for name in bundled_names():
        assert name in values
    assert p.model.value == "a"
    update(p.model, index=values.index("b"))
    assert reg.current_name == "b"
    reg._names.append("c")                                 # loaded elsewhere (%ryz load)
    p.refresh_models()
    assert "c" in [v for _, v in p.model.options]


def test_model_dropdown_without_loaded_models_sets_default_model(magics):
    magics.default_model = "tests/fixtures/bitnet/packed"
    p = controls_panel(magics, registry=FakeRegistry())
    assert p.model.value == "tests/fixtures/bitnet/packed"


def test_generate_button_runs_with_current_settings(magics, update):
    seen = []

    def runner(prompt):
        seen.append((prompt, magics.temperature, magics.max_new_tokens))
        return "reply"

    p = controls_panel(magics, registry=FakeRegistry(), runner=runner)
    update(p.controls["temperature"], value=0.1)
    p.prompt.value = "Hello"
    p.generate_button.click()
    assert seen == [("Hello", pytest.approx(0.1), 128)]
    assert p.generations == 1 and not p.generate_button.disabled


def test_generate_errors_are_one_line_and_empty_prompt_refused(magics):
    def runner(prompt):
        raise ValueError("the model folder has no config.json")

    p = controls_panel(magics, registry=FakeRegistry(), runner=runner)
    p.generate_button.click()
    assert "write a prompt first" in p.status.value
    p.prompt.value = "x"
    p.generate_button.click()
    assert "ValueError: the model folder has no config.json" in p.status.value
    assert not p.generate_button.disabled


def test_close_unlinks(magics):
    p = controls_panel(magics, registry=FakeRegistry())
    t = p.controls["temperature"]
    p.close()
    magics.temperature = 0.5
    assert t.value != 0.5


def test_real_ryzmagics(update):
    from ryzjupyter.jupyter import magics as mod
    from IPython.testing.globalipapp import get_ipython
    shell = get_ipython()
    m = mod.RyzMagics(shell=shell)
    p = controls_panel(m)
    update(p.controls["temperature"], value=0.35)
    assert m.temperature == pytest.approx(0.35)
    shell.run_line_magic("config", "RyzMagics.temperature = 0.3") if m in shell.configurables else None
    m.top_p = 0.5
    assert p.controls["top_p"].value == pytest.approx(0.5)


def test_generate_shows_the_panel_chart(magics):
    from ryzjupyter.engine.profiling import PROFILER

    def runner(prompt):                       # stands in for the engine: marks tokens on the profiler
        PROFILER.begin()
        PROFILER.stage("decode")
        for _ in range(5):
            PROFILER.token()
        PROFILER.end(n_prompt=3)

    p = controls_panel(magics, registry=FakeRegistry(), runner=runner)
    p.generate("Hi")
    assert p.chart is not None and p.chart_box.children == (p.chart,)
    kinds = [m["type"] for m in p.chart.sent]
    assert kinds[0] == "reset" and "points" in kinds and kinds[-1] == "done"
    assert p.chart.summary["n_generated"] == 5 and PROFILER.token_hooks == []


def test_model_list_follows_generations_elsewhere(magics):
    from ryzjupyter.engine.profiling import PROFILER
    reg = FakeRegistry(["a"])
    p = controls_panel(magics, registry=reg)
    reg._names.append("b")                   # a %%ryz -m b cell loaded and used another model
    reg.current_name = "b"
    PROFILER.begin()
    PROFILER.end()
    assert "b" in [v for _, v in p.model.options] and p.model.value == "b"
    p.close()
    assert p._listener not in PROFILER.listeners


def test_draft_selector_both_ways(magics, update):
    p = controls_panel(magics, registry=FakeRegistry())
    d, k = p.controls["draft"], p.controls["num_draft"]
    assert {"off", "lookup", "adjacency", "auto", "demo-draft"} <= set(d.options)
    update(d, value="lookup")
    assert magics.draft == "lookup"
    update(d, value="off")
    assert magics.draft == ""
    magics.draft = "demo-draft"                              # %config RyzMagics.draft = 'demo-draft'
    assert d.value == "demo-draft"
    update(k, value="4")
    assert magics.num_draft == 4
    update(k, value="")
    assert magics.num_draft is None
    update(k, value="99")                                    # refused, reported, snaps back
    assert magics.num_draft is None and "0..15" in p.status.value
