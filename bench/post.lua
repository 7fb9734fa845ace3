-- wrk script: a metered POST with the bench key from the environment.
wrk.method = "POST"
wrk.body = '{"prompt": "best running shoes"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
