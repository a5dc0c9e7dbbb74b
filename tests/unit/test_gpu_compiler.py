"""uip.core.gpu_compiler: CPU-host stubs do not import the Triton GPU compiler."""

import subprocess
import sys
from pathlib import Path

from uip.core.gpu_compiler import gpu_host, skip_on_cpu_host


def test_gpu_host_from_device_nodes(tmp_path: Path):
    assert not gpu_host(tmp_path)
    (tmp_path / "nvidiactl").touch()  # the control node alone is no GPU
    assert not gpu_host(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert gpu_host(tmp_path)


def test_kept_on_gpu_hosts_in_interpreter_mode_or_when_asked(tmp_path: Path):
    (tmp_path / "nvidia0").touch()
    assert not skip_on_cpu_host({}, tmp_path)
    assert not skip_on_cpu_host({"TRITON_INTERPRET": "1"}, tmp_path.parent / "none")
    assert not skip_on_cpu_host({"UIP_TRITON_COMPILER": "import"}, tmp_path.parent / "none")


def test_cpu_host_torch_sees_no_triton(tmp_path: Path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from uip.core.gpu_compiler import skip_on_cpu_host\n"
        f"assert skip_on_cpu_host({{}}, Path({str(tmp_path)!r}))\n"
        "import torch._dynamo\n"
        "from torch.utils._triton import has_triton_package\n"
        "assert not has_triton_package() and sys.modules['triton'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
