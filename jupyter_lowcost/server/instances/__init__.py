"""The instance manager's parts (:class:`jupyter_lowcost.server.manager.InstanceManager`
holds one of each and is the only caller):

- :mod:`.entries`: what the manager knows (settings, kernel and instance entries);
- :mod:`.ledger`: every entry, and the one place where records change state;
- :mod:`.launches`: a kernel's launch on an instance, for the kernel provisioner;
- :mod:`.notices`: notices, the lifetime cap, and what backends report;
- :mod:`.recovery`: a kernel whose instance was taken away, relaunched or fallen back;
- :mod:`.moves`: a kernel switched to another placement by its user;
- :mod:`.adoption`: a restart of the Jupyter server, kernels taken back or resumed;
- :mod:`.clients`: JupyterLab's websocket clients across a move or a recovery;
- :mod:`.kernel_reports`: what kernels report of their checkpoints;
- :mod:`.rest_models`: the REST API's side: validation and the JSON it answers.
"""
