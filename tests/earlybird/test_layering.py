"""The algorithm core must not depend on the diffusion stack (DESIGN.md layers); only the front does."""

import subprocess
import sys


def test_core_modules_do_not_import_diffusion():
    code = ("import sys\n"
            "import ebsparse.earlybird.config, ebsparse.earlybird.tickets, ebsparse.earlybird.heatmap\n"
            "import ebsparse.earlybird.regions, ebsparse.earlybird.router\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('ebsparse.diffusion', 'ebsparse.data')))\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
