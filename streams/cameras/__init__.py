"""Camera ingestion: sources, virtual cameras, and the agent that publishes frames to Kafka."""
