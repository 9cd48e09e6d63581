import sys
sys.argv_ = list(sys.argv)
sys.path.insert(0, "/work/main")
exec(open("/tmp/sim.py").read().split('if __name__ == "__main__":\n    vs')[0])
sys.path.insert(0, "/work/main"); [sys.modules.pop(m) for m in list(sys.modules) if m == "search" or m.startswith("search.") or m == "objectives" or m.startswith("objectives.")]
from search.sampler import HypervolumeGainSampler

def run_real(n, seed, recipes=True, **kw):
    rng = np.random.default_rng(seed + 1000)
    sampler = HypervolumeGainSampler(lambda s: bounds, seed=seed, n_startup_trials=5, cost_knobs=("width", "sparsity", "precision", "pruning"), **kw)
    st = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"], sampler=sampler)
    if recipes:
        for r in RECIPES:
            st.enqueue_trial(r)
    pts = []
    trained = asks = 0
    while trained < n and asks < 5 * n:
        asks += 1
        tr = st.ask()
        p = suggest(tr)
        a, l, s, e = evaluate(p, rng)
        tr.set_constraint("latency_budget", l / budget - 1)
        for k, v in (("latency_ms_p90", l), ("size_bytes", s), ("energy_mj", e)):
            tr.set_user_attr(f"metric:{k}", [v, "", "sim"])
        if l > 1.1 * budget:
            st.tell(tr, state=TrialState.PRUNED)
            continue
        tr.set_user_attr("metric:accuracy", [a, "", "sim"])
        trained += 1
        st.tell(tr, [a, l, s, e])
        if l <= budget:
            pts.append([a, l, s, e])
    return normalised_hypervolume(pts, bounds)

import time
import os
INDEP = bool(os.environ.get('INDEP'))
print('INDEP', INDEP, np.quantile(residuals(), [.1,.5,.9]), flush=True)
seeds = range(int(sys.argv_[2]))
for v in sys.argv_[1].split(","):
    t0 = time.time()
    if v.startswith("real"):
        kw = dict(kv.split("=") for kv in v.split(":")[1:])
        kw = {k: (float(x) if k == "beta" else int(x)) for k, x in kw.items()}
        hv = [run_real(24, s, **kw) for s in seeds]
    else:
        hv = [variant(v, s) for s in seeds]
    print(f"{v:16s} median {np.median(hv):.4f} mean {np.mean(hv):.4f} q25 {np.quantile(hv, .25):.4f} q75 {np.quantile(hv, .75):.4f}  {time.time()-t0:.0f}s  " + " ".join(f"{h:.3f}" for h in hv), flush=True)
