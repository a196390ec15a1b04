import sys
from bench import seed_models
name, steps, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = seed_models.run(name, "../shared/data/example.jpg", steps, chunk, progress=lambda s,t,e: print(s, round(t,1), round(e,4), flush=True))
print({k: v for k, v in r.items() if not k.endswith("by_step")}, seed_models.convergence(r["rmse_by_step"]))
