"""Load testing: realistic payloads, Locust scenarios with SLO verdicts, and the side-by-side benchmark."""
