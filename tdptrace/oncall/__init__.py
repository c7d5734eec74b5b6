"""On-call analysis built on the metrics: triage, the kernel log, A/B compare, plots, the HTML report and the
text renderings the commands print."""
