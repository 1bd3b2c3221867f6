"""DUT harness: start an implementation from its profile, capture its output, stop it, detect crashes."""
from conformance.harness.dut import Dut, DutActionError
from conformance.harness.ports import free_port
from conformance.harness.process import DutCrashed, DutProcess, DutStartError, DutTimeout

__all__ = ["Dut", "DutActionError", "DutCrashed", "DutProcess", "DutStartError", "DutTimeout", "free_port"]
