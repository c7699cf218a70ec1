"""Host-side actors: vCPU threads, CPU pinning, contention, userfaultfd."""
