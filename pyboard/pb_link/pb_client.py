# Runs the demo, as in the original: `import pb_link.pb_client`.
# The demo itself is pb_link/demo.py (importable without running it).
from pb_link.demo import run

run()
