"""Stage 2, inference: the Focoos HUB client (typed errors, tolerant parsing) and the uplink workers
that send live frames first, spill the rest to the spool, and replay it when the API is back."""
