"""`bench soak`, short: one real kernel, 24 `%%ryz` cells across demo and demo-draft with hot-swaps,
chat turns and interrupts at random moments. Every reply is complete or marked interrupted and
belongs to its cell, the chat history and the KV reuse hold, and the kernel's memory does not
grow past the bound after the warm-up (the full run, 200 cells of 200 tokens, is
`python -m ryzjupyter.bench soak`; docs/robustness.md has its record)."""
import json

from ryzjupyter.bench import report, soak


def test_soak_short(tmp_path):
    # on a fast machine a cell lasts tens of ms and many interrupts come after it ended: ask for many
    res = soak.soak(cells=24, tokens=40, interrupt_share=0.6, chat_share=0.4, seed=1, rss_bound_mib=16.0, log=None,
                    trace_memory=True)
    assert res.failures == [], "\n".join(res.failures)
    t = res.memory_trace                      # --trace-memory: where the growth went, from inside the kernel
    assert t["out_end"] >= t["out_warm"] > 0 and t["inputs_end"] > t["inputs_warm"]
    assert t["mallinfo_end"]["arena"] > 0 and t["rss_after_trim_mib"] > 0
    # an interrupt leaves the magic with a short traceback: no ryzjupyter module is parsed for its
    # display after the warm-up (the interrupts of the warm-up already showed magics.py)
    assert not [f for f, *_ in t["traceback_sources_added"] if "ryzjupyter" in f], t["traceback_sources_added"]
    assert res.ok, f"kernel RSS grew {res.rss_growth_mib:.2f} MiB after the warm-up (bound 16 MiB): {res.rss_mib}"
    assert len(res.rss_mib) == 24
    assert res.complete + res.interrupted + res.interrupted_before_reply == 24
    assert res.interrupts_sent >= 3                               # seed 1: 14 cells are due an interrupt
    assert res.swaps >= 5 and res.chat_turns + res.interrupted_before_reply >= 3


def test_soak_record_renders(tmp_path):
    """The --json record (what docs/data/ commits) renders with bench report."""
    record = {"bench": "soak", "machine": {"cpu": "test CPU", "logical_cpus": 2, "physical_cores": 1, "isa": "avx2",
                                           "supported_isas": ["scalar", "avx2"], "date": "2026-12-07"},
              **soak.asdict(soak.SoakResult(cells=8, tokens=40, seconds=3.0, complete=6, interrupted=1,
                                            interrupted_before_reply=1, interrupts_sent=2, swaps=4, chat_turns=3,
                                            kv_reuse_checked=1, rss_mib=[100.0] * 8, rss_warm_mib=100.0,
                                            rss_final_mib=100.5, rss_growth_mib=0.5))}
    p = tmp_path / "soak.json"
    p.write_text(json.dumps(record))
    text = report.render([p])
    assert "| 6 | 1 | 1 | **0** |" in text and "**+0.50 MiB** (bound 16 MiB)" in text
    mi = {"arena": 30 * 2**20, "hblkhd": 2**20, "uordblks": 20 * 2**20}
    record["memory_trace"] = {"mallinfo_warm": mi, "mallinfo_end": mi, "objects_growth": {"Reply": 5, "dict": 9},
                              "traceback_sources_warm": 1, "traceback_sources_end": 1, "out_warm": 3, "out_end": 8,
                              "rss_end_mib": 100.5, "rss_after_trim_mib": 100.2}
    p.write_text(json.dumps(record))
    text = report.render([p])
    assert "live objects gained Reply +5, dict +9" in text and "(`Out`) 3 -> 8 entries" in text
    assert "31.0 -> 31.0 MiB from the system" in text and "100.2 after malloc_trim" in text
