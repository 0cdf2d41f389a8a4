"""taskyard: a Kubernetes operator that runs AI coding agents as isolated, observable, cancellable Jobs."""
