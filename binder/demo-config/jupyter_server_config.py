# DEMO SETTINGS of jupyter-lowcost, for the Binder demo only. They make low-cost instances
# behave far worse than a cloud's spot instances do, so that an interruption and the
# lifetime cap can be seen in a few minutes. A real deployment leaves all of this out.
#
# binder/start puts this folder on JUPYTER_CONFIG_PATH; to try the demo on your own machine:
#     binder/start jupyter lab binder/demo.ipynb

c = get_config()  # noqa: F821 (Jupyter defines it while it reads this file)

# Demo mode: JupyterLab's Low-cost dialog and status bar, %lowcost and GET status say that
# this server is a demo, and what it does differently.
c.LowCostApp.demo = True

# The embedded local backend runs the instances as processes on this machine (the default).
c.LowCostApp.backend = "local"

# Random interruptions: about 12 per low-cost instance and hour (one every 5 minutes on
# average), each announced 30 s ahead, as a spot instance's reclaim notice is.
c.LocalBackend.random_interruption_rate = 12
c.LocalBackend.random_interruption_notice = 30

# A 10-minute lifetime cap instead of 24 hours, with 30 s notice, to watch the countdown
# in the status bar reach it: the kernel is then checkpointed and relaunched.
c.LowCostApp.lifetime_cap = 10 * 60
c.LowCostApp.cap_notice = 30

# A Binder container has a few CPUs and no GPU: four instances at once, one per kernel.
c.LocalBackend.slots = 4
c.LocalBackend.gpus = 0
