"""Server benchmark: the real ``protembed serve`` process driven over loopback by HTTP and gRPC clients.

What it measures, all on sequences sampled from the training corpus (its real length distribution),
cropped to the model's maximum length, one sequence per request, each sequence sent once (so throughput
levels never hit the cache):

* per transport and concurrency level (requests in flight, closed loop): throughput (requests/s and
  residues/s), p50/p95/p99 latency, errors; and from the server's own ``/metrics`` for that level, the
  batches it formed (mean size, padding share of padded tokens);
* raw ONNX Runtime on the same sequences in this process, with the server's thread count, best pass of
  several measurements spread over the run, in three batch shapes: the batches the server's own queue
  forms from this stream at the top concurrency level (replayed, see below): ``server_vs_raw_ort`` = the
  best server residues/s over it, what the server adds to the model; the whole stream length-sorted
  into the token budget, which no online batcher sees: ``server_vs_raw_ort_sorted``; and one sequence
  per run (on some CPUs a big padded batch is slower per residue than none):
  ``server_vs_raw_ort_best_shape`` against the fastest of the three;
* padding with length bucketing vs arrival-order (FIFO) batching on the same request stream: the
  core's own ``BatchQueue`` replayed with a fake clock, closed loop at each concurrency level, once
  with each of its batching policies (``bucketed``, ``fifo``);
* cache hit vs miss latency for median-length sequences (sequential HTTP requests).

Every loop is bounded in requests and in seconds; the server listens on 127.0.0.1 only.

One module per concern: :mod:`.config` (the run's settings), :mod:`.server` (the process),
:mod:`.clients` and :mod:`.load` (requests and closed-loop levels), :mod:`.metrics` (the server's /metrics),
:mod:`.replay` (the queue replayed), :mod:`.raw_ort` (the baseline), :mod:`.cache_timing`, :mod:`.run` (the
whole run) and :mod:`.report` (markdown and summary values).
"""
