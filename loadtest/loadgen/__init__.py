"""An open-loop load generator for promptswap and any OpenAI-compatible server: `python -m loadtest.loadgen --help`.

One idea per file: when requests are sent (`arrivals`), what they ask for (`workload`, `lengths`, `prompt_text`),
how one is sent and timed (`client`), how the run is driven (`runner`, `progress`), what it measured (`metrics`),
and how that is written out (`report`, `plots`); `cli` ties them together. Nothing here imports torch or the
server: the generator is a plain HTTP client and can run on another machine.
"""
