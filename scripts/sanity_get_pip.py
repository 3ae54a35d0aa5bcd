"""Local stand-in for the get-pip.py that `ansible-test` downloads from ci-files.testing.ansible.com (unreachable
from these machines) to put pip into each sanity test's fresh virtual environment.

ansible-test runs it with the venv's Python as `get_pip.py [pip install options] pip==X --no-setuptools --no-wheel`.
The same result without a download: the standard library's ensurepip puts its bundled pip into the venv, and that
pip then installs the exact pip version asked for from the configured package index.
"""

import ensurepip
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
