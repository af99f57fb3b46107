"""``python -m jupyter_lowcost.launcher``: the command every backend runs on an instance.

The launcher itself is :mod:`jupyter_lowcost.instance.launcher`; this name is part of the
contract with backends and job scripts (and with launchers already running when the
package is upgraded), so it stays.
"""

from __future__ import annotations

if __name__ == "__main__":
    from jupyter_lowcost.instance.launcher import main

    main()
