"""The service around fits: the fit store, one route per request (store or fit), background jobs, batches
and the command line."""
