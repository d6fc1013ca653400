"""Built-in pipeline stages; `procnode.pipeline` builds them from the topology."""
