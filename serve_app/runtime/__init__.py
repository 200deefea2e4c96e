"""What replicas, jobs and the CLI run on: batch planning, replica placement, canary
references, tracing, the ingress plan and packaged file locations."""
