"""Droplet dashboard: the script Streamlit runs (``streamlit run app.py``).

The pages are the files in ``pages/``, listed explicitly with ``st.navigation`` +
``st.Page``; what they share (navigation, store, session state, sidebar) is
``app_support.app``.
"""

import sys
from pathlib import Path

# Streamlit puts this script's folder on the path; other launchers (AppTest) may not.
REPO = str(Path(__file__).resolve().parent)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from app_support.app import main  # noqa: E402 - needs the path above

# Streamlit runs this script as ``__main__``; a process spawned from a session (a Dask worker of
# a local cluster) imports it again as ``__mp_main__`` and must not start an app.
if __name__ == "__main__":
    main()
