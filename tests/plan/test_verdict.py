"""The verdict on a 16 GB and a 64 GB Mac, every figure worked by hand below.

Inputs: float16, 256 prompt + 128 new tokens, high ratio 1.0 (mpsctl's default), no
running service (overhead = the stated 397,541,376-byte estimate), a 10% margin.
Working sets: 2/3 of RAM at 16 GB, 3/4 at 64 GB (the published Metal readings, checked
against tests/fixtures/planning-recommended-working-set.tsv in test_limit.py).
"""

from __future__ import annotations

from mpsctl.plan.limit import mps_limit
from mpsctl.plan.plan import make_plan
from mpsctl.plan.presets import PRESETS

GIB = 2**30
OVERHEAD = 397_541_376


def plan_on_mac(preset: str, ram_gib: int, concurrent: int = 4):  # type: ignore[no-untyped-def]
    limit = mps_limit(ram_gib * GIB, "--ram", 1.0, None, None)
    return make_plan(PRESETS[preset], dtype="float16", device="mps", device_source="set",
                     limit=limit, max_concurrent=concurrent, max_new_tokens=128,
                     prompt_tokens=256)  # fmt: skip


def test_3b_on_a_16gb_mac_fits_4_and_up_to_109() -> None:
    plan = plan_on_mac("qwen2.5-3b", 16)
    # parameters: embed 151936*2048 = 311_164_928 (tied: no lm_head)
    # per layer: q 2048*2048+2048, k and v 2048*256+256 each, o 2048*2048,
    #   MLP 3*2048*11008, norms 2*2048 = 77_076_992; x 36 layers + final norm 2048
    params = 311_164_928 + 36 * 77_076_992 + 2048
    assert params == 3_085_938_688
    assert plan.figures.weights_bytes == 2 * params == 6_171_877_376
    # KV: 2 * 36 layers * 2 KV heads * 128 head dim * 2 bytes = 36_864 B/token, x 384 tokens
    assert plan.figures.kv_cache_per_query_bytes == 36_864 * 384 == 14_155_776
    # logits: 151936 * 2 (last position, float16) + 151936 * 4 (float32 copy) = 911_616
    # activations: 2 * (2*256*2048 + max(3*256*11008, 256*(2*2048+2*256) + 16*256*256))
    #            = 2 * (1_048_576 + 8_454_144) = 19_005_440
    assert plan.figures.peak_per_query_bytes == 911_616 + 19_005_440
    per_query = 14_155_776 + 19_917_056  # 34_072_832
    assert plan.total_bytes == 6_171_877_376 + OVERHEAD + 4 * per_query == 6_705_710_080
    # limit: 1.0 * (16 GiB * 2 // 3) = 11_453_246_122; usable 90% = 10_307_921_509
    assert plan.limit.limit_bytes == 11_453_246_122
    assert plan.usable_bytes == 10_307_921_509
    assert plan.fits is True
    # (10_307_921_509 - 6_569_418_752) // 34_072_832 = 3_738_502_757 // 34_072_832 = 109
    assert plan.max_concurrent_that_fits == 109
    # 110 queries: 3_738_502_757 // 110 = 33_986_388; - 19_917_056 = 14_069_332;
    # // 36_864 = 381 tokens per query, - 256 prompt = 125 new tokens
    assert plan.max_new_tokens_for_one_more == 125
    # RAM less the 4 GiB reserve: 12_884_901_888 / 11_453_246_122 = 1.125 -> high 1.12,
    # low min(1.12, 1.4)
    assert plan.ram_ceiling_bytes == 12_884_901_888
    assert (plan.suggested_high, plan.suggested_low) == (1.12, 1.12)
    # loading converts the bf16 checkpoint to float16: overhead + both copies
    # = 397_541_376 + 2 * 6_171_877_376 = 12_741_296_128, just under the RAM ceiling
    assert plan.load_host_bytes == 12_741_296_128
    assert plan.load_fits
    assert [r.total_bytes for r in plan.rows] == [
        6_569_418_752 + n * per_query for n in (1, 2, 3, 4)
    ]


def test_7b_on_a_16gb_mac_does_not_fit_and_points_to_3b() -> None:
    plan = plan_on_mac("qwen2.5-7b", 16)
    # 7_615_616_512 parameters * 2 = 15_231_233_024 bytes: more than the 10_307_921_509 usable
    assert plan.figures.weights_bytes == 15_231_233_024
    assert (plan.fits, plan.max_concurrent_that_fits) == (False, 0)
    assert plan.smaller_preset == "qwen2.5-3b"
    assert plan.to_json()["fits"] is False


def test_32b_on_a_64gb_mac_does_not_fit_and_points_to_14b() -> None:
    plan = plan_on_mac("qwen2.5-32b", 64)
    # limit: 1.0 * 64 GiB * 3 // 4 = 51_539_607_552 (= 49152 MiB); usable 46_385_646_796
    assert plan.limit.limit_bytes == 51_539_607_552
    assert plan.usable_bytes == 46_385_646_796
    # 32_763_876_352 parameters * 2 = 65_527_752_704 bytes
    assert plan.figures.weights_bytes == 65_527_752_704
    assert plan.max_concurrent_that_fits == 0
    assert plan.smaller_preset == "qwen2.5-14b"


def test_14b_on_a_64gb_mac_fits_159() -> None:
    plan = plan_on_mac("qwen2.5-14b", 64)
    # weights 14_770_033_664 * 2 = 29_540_067_328; KV 2*48*8*128*2 = 196_608 B/token * 384
    assert plan.figures.kv_cache_per_query_bytes == 75_497_472
    # logits 152064 * 6 = 912_384; activations 2 * (2*256*5120 + 3*256*13824) = 26_476_544
    assert plan.figures.peak_per_query_bytes == 912_384 + 26_476_544
    # (46_385_646_796 - 29_540_067_328 - 397_541_376) // 102_886_400 = 159
    assert plan.max_concurrent_that_fits == 159
    # (64 - 4) GiB / 48 GiB = 1.25 -> high 1.25, low 1.25
    assert (plan.suggested_high, plan.suggested_low) == (1.25, 1.25)
    assert plan.binding == "allocator"  # 46.4 GB usable, below the 60 GiB RAM ceiling


def test_pytorch_default_ratio_puts_the_limit_above_ram_on_16gb() -> None:
    limit = mps_limit(16 * GIB, "--ram", None, None, None)
    # 1.7 * 11_453_246_122 = 19_470_518_407 > 17_179_869_184: swap, not an OOM error
    assert limit.limit_bytes == 19_470_518_407
    plan = make_plan(PRESETS["qwen2.5-0.5b"], dtype="float16", device="mps",
                     device_source="set", limit=limit, max_concurrent=1,
                     max_new_tokens=128, prompt_tokens=256)  # fmt: skip
    assert plan.limit.above_ram
    assert any("above RAM" in note for note in plan.notes)


def test_the_plan_document_of_3b_on_a_16gb_mac() -> None:
    # every figure is the one worked by hand in test_3b_on_a_16gb_mac_fits_4_and_up_to_109
    from dataclasses import replace

    from mpsctl.plan.verdict import Input

    plan = replace(plan_on_mac("qwen2.5-3b", 16),
                   inputs=(Input("max_new_tokens", 128, "--max-new-tokens"),))  # fmt: skip
    per_query = 34_072_832
    ratio_source = (
        "[memory] high_watermark_ratio (set) 1 (PyTorch's default would be 1.7: max allowed "
        "18.13 GB on this Mac)"
    )
    expected = {
        "schema": "mpsctl.plan/1",
        "model": "qwen2.5-3b",
        "model_source": "preset: config.json of Qwen/Qwen2.5-3B-Instruct on Hugging Face",
        "parameters": 3_085_938_688,
        "dtype": "float16",
        "device": "mps",
        "device_source": "set",
        "prompt_tokens": 256,
        "max_new_tokens": 128,
        "max_concurrent": 4,
        "inputs": {"max_new_tokens": {"value": 128, "source": "--max-new-tokens"}},
        "weights_bytes": 6_171_877_376,
        "kv_cache_per_token_bytes": 36_864,
        "kv_cache_per_query_bytes": 14_155_776,
        "logits_bytes": 911_616,
        "activation_bytes": 19_005_440,
        "peak_per_query_bytes": 19_917_056,
        "per_query_bytes": per_query,
        "per_query_growth": 1.0,
        "per_query_growth_source": None,
        "per_query_counted_bytes": per_query,
        "overhead_bytes": OVERHEAD,
        "overhead_source": "estimate: RSS of python + torch + transformers + fastapi before a "
        "model loads (measured on Linux, torch 2.13)",
        "checkpoint_bytes": 6_171_877_376,  # bfloat16 on disk: as large as the float16 copy
        "load_converts_dtype": True,
        "load_spike_bytes": 6_171_877_376,
        "load_peak_bytes": 12_741_296_128,
        "load_fits": True,
        "total_bytes": 6_705_710_080,
        "limit_bytes": 11_453_246_122,
        "limit_source": "high ratio 1 x recommended working set",
        "usable_bytes": 10_307_921_509,
        "margin": 0.1,
        "ceilings": {
            "allocator": {
                "bytes": 11_453_246_122,
                "usable_bytes": 10_307_921_509,
                "source": "high ratio 1 x recommended working set",
            },
            "ram": {
                "bytes": 12_884_901_888,
                "ram_bytes": 16 * GIB,
                "reserve_bytes": 4 * GIB,
                "reserve_source": "default: ~2 GiB the OS wires (recorded macOS readings) + "
                "2 GiB for its own processes",
                "counts_the_model": True,
            },
            "binding": "allocator",
        },
        "recommended_max_bytes": 11_453_246_122,
        "recommended_max_source": "estimate: 2/3 of RAM (Metal's reading on Macs of that size)",
        "high_watermark_ratio": 1.0,
        "high_watermark_ratio_source": ratio_source,
        "low_watermark_ratio": 1.0,
        "ram_bytes": 16 * GIB,
        "ram_source": "--ram",
        "limit_above_ram": False,
        "positions_fit": True,
        "max_position_embeddings": 32_768,
        "fits": True,
        "max_concurrent_that_fits": 109,
        "max_new_tokens_for_one_more": 125,
        "suggested_high_watermark_ratio": 1.12,
        "suggested_low_watermark_ratio": 1.12,
        "smaller_preset_that_fits": None,
        "rows": [
            {
                "concurrent": n,
                "total_bytes": 6_569_418_752 + n * per_query,
                "fits": True,
                "above_ram": False,
                "refused_by": None,
            }
            for n in (1, 2, 3, 4)
        ],
        "notes": [
            "loading converts the checkpoint (6171877376 bytes) to float16: the host holds "
            "both for a moment (6171877376 bytes more); loading in the checkpoint's own dtype "
            "avoids it"
        ],
    }
    doc = plan.to_json()
    assert doc == expected
    assert list(doc) == list(expected)  # the documented order
