"""The server's own view of batching during a load level: its /metrics counters before and after."""

from __future__ import annotations


def scrape(url: str) -> dict[str, float]:
    """The batching counters of the server's /metrics (sums over the whole run so far)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10.0).text
    wanted = {
        "protembed_batch_size_sum",
        "protembed_batch_size_count",
        "protembed_batch_padded_tokens_sum",
        "protembed_batch_padding_ratio_sum",
        "protembed_batch_padding_ratio_count",
        "protembed_embedded_residues_total",
    }
    out = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] += float(sample.value)
    return out


def batching_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    d = {k: after[k] - before[k] for k in before}
    batches = d["protembed_batch_size_count"]
    padded = d["protembed_batch_padded_tokens_sum"]
    real = d["protembed_embedded_residues_total"]
    return {
        "batches": batches,
        "mean_batch_size": d["protembed_batch_size_sum"] / batches if batches else None,
        "padding_share_of_tokens": 1.0 - real / padded if padded else None,
        "mean_batch_padding_ratio": d["protembed_batch_padding_ratio_sum"]
        / d["protembed_batch_padding_ratio_count"]
        if d["protembed_batch_padding_ratio_count"]
        else None,
    }
