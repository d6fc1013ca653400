"""Processing node: receiver -> (event builder) -> pipeline stages -> sinks."""
