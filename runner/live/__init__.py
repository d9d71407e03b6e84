"""The live backend: jobs sent to the API as they are read, paced, retried and matched back
(`dispatch`), and one run wired together: lock, checkpoint, dispatch, progress (`run`)."""
