# The Job of k8s/job.yaml turned into a one-off `runner.py doctor` with the very same pod: image, settings,
# mounted Secrets, CA bundle, security and labels (so the NetworkPolicy lets it reach the databases).
#   sed -f k8s/doctor.sed k8s/job.yaml | kubectl apply -f -
# Only the Job's name, its retries and the container's command change; the NetworkPolicy passes unchanged.
# The runner directly, not `make doctor`: make turns any failing recipe into exit 2, doctor's FAIL is 1.
0,/^  name: hcm-db-migrations$/s//  name: hcm-db-migrations-doctor/
s/^  backoffLimit: 1$/  backoffLimit: 0/
s/^          command: \["python3", "runner.py", "migrate"\]$/          command: ["python3", "runner.py", "doctor", "--no-dev-tools"]/
