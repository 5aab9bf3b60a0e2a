"""The bounded load test: 200 streaming requests from 16 concurrent clients (the official openai
client) against `python -m ryzjupyter serve` on 127.0.0.1: none lost, none mixed up (every answer
equals its prompt's answer alone), the server's memory back to its level before, still serving;
time to first token p50 / p99 reported. The same code runs in `python -m ryzjupyter.bench serve`."""
import pytest

pytest.importorskip("openai")


def test_200_requests_16_clients():
    from ryzjupyter.bench.serve import load_test
    res = load_test("demo", requests=200, clients=16)
    print(f"\nload test: {res['req_s']:.1f} req/s, TTFT p50 {res['ttft_p50_s'] * 1e3:.0f} ms, "
          f"p99 {res['ttft_p99_s'] * 1e3:.0f} ms, RSS {res['rss_before'] / 2**20:.1f} -> "
          f"{res['rss_after'] / 2**20:.1f} MiB")
    assert res["requests"] == 200 and res["clients"] == 16
    assert res["lost"] == 0, res["errors"]
    assert res["mixed"] == 0
    assert res["serving_after"]
    assert res["rss_growth"] < 8 * 2 ** 20, res            # no leak: within 8 MiB of the level before
    assert 0 < res["ttft_p50_s"] <= res["ttft_p99_s"] < 60
    assert res["wall_s"] < 300                              # bounded
