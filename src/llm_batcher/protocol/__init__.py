"""The task protocol shared by the API and the workers, over Redis (docs/protocol.md).

- keys.py: the Redis schema (key names, entry ids, fixed names);
- outcomes.py: task states, error codes, and the scripts' typed answers;
- scripts.py and lua/: the atomic state changes, one Lua script each;
- tasks.py: the task state machine (submit, start, append, finish, cancel, expire);
- claims.py: claims, leases, the read turn, heartbeats, taking over dead workers' tasks and
  queue depth;
- results.py: reading answers (and the outcome records behind /stats);
- dead_letters.py: the tasks the workers gave up on: listing, requeueing, purging;
- queue.py: `TaskQueue`, all of them over one client;
- connection.py: building the Redis client, and which errors mean "Redis is unavailable".
"""
