# Run by the .pth hook in every Python process started under `pytest -p bench.cpu_profile` (HCM_CPU_TEST set):
# at exit, one line per kind of process this one started and reaped (count, CPU) and its own CPU, appended to
# $HCM_CPU_PROFILE/children.log keyed by the test.
def _hcm_cpu_profile_child():
    import atexit
    import json
    import os
    import resource
    import sys

    if getattr(sys, "_hcm_cpu_profile_child", False):  # (once a process)
        return
    sys._hcm_cpu_profile_child = True
    import importlib.util
    spec = importlib.util.spec_from_file_location("_hcm_cpu_profile", os.environ.get("HCM_CPU_PROFILE_PLUGIN", ""))
    if spec is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.WAITS.install()
    test, out = os.environ["HCM_CPU_TEST"], os.environ.get("HCM_CPU_PROFILE", "/tmp/hcm-cpu-profile")

    def report():
        me = module.kind(getattr(sys, "orig_argv", sys.argv))
        cpu, count = module.WAITS.take()
        own = resource.getrusage(resource.RUSAGE_SELF)
        line = json.dumps({"test": test, "me": me, "pid": os.getpid(), "self": round(own.ru_utime + own.ru_stime, 3),
                           "kinds_cpu": cpu, "kinds_count": count})
        try:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "children.log"), "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    atexit.register(report)


try:
    _hcm_cpu_profile_child()
except Exception:
    pass
