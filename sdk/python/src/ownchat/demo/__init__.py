"""The main job's pieces that know nothing of gRPC: the data funnel, the PII leakage
probe's checks and the report page. ``ownchat.cli.demo`` drives the services and
fills them in."""
