"""The Python client of the task API's reference document, as written there (its create, poll, stream
and stop functions; the lines under "# Usage" left out). The tests load it with the document's base URL,
http://localhost:9090, replaced by the address of the API under test, and MANAGEMENT_API_KEY set to a
Kubernetes token. Kept verbatim on purpose: ruff does not check this file."""

import requests
import os

class TaskClient:
    def __init__(self, base_url='http://localhost:9090'):
        self.base_url = base_url
        self.headers = {
            'Authorization': f"Bearer {os.getenv('MANAGEMENT_API_KEY')}",
            'Content-Type': 'application/json'
        }

    def create_task(self, agent, task, provider='gemini'):
        response = requests.post(
            f'{self.base_url}/v1/tasks',
            headers=self.headers,
            json={'agent': agent, 'task': task, 'provider': provider}
        )
        response.raise_for_status()

        data = response.json()
        print(f"Task created: {data['taskId']}")
        return data


import time

def poll_until_complete(client, task_id, interval=5):
    while True:
        response = requests.get(
            f'{client.base_url}/v1/tasks/{task_id}',
            headers=client.headers
        )
        response.raise_for_status()

        data = response.json()
        status = data['status']
        duration = data['duration']

        print(f"Task {task_id}: {status} ({duration}ms)")

        if status != 'running':
            if status == 'completed':
                return data
            else:
                error = data.get('error', 'Unknown error')
                raise Exception(f"Task {status}: {error}")

        time.sleep(interval)


import sseclient
import requests
import json
import os

def stream_logs(task_id):
    url = f'http://localhost:9090/v1/tasks/{task_id}/logs/stream'
    headers = {
        'Authorization': f"Bearer {os.getenv('MANAGEMENT_API_KEY')}",
        'Accept': 'text/event-stream'
    }

    response = requests.get(url, headers=headers, stream=True)
    client = sseclient.SSEClient(response)

    try:
        for event in client.events():
            if event.event == 'message' or event.event == '':
                data = json.loads(event.data)
                timestamp = data['timestamp']
                line = data['line']
                print(f"[{timestamp}] {line}")

            elif event.event == 'task-complete':
                data = json.loads(event.data)
                print(f"\nTask completed: {data['status']} (exit code: {data['exitCode']})")
                break

            elif event.event == 'error':
                data = json.loads(event.data)
                print(f"Stream error: {data['message']}")
                break

    except Exception as e:
        print(f"Connection error: {e}")
    finally:
        response.close()


def stop_task(client, task_id):
    try:
        response = requests.delete(
            f'{client.base_url}/v1/tasks/{task_id}',
            headers=client.headers
        )
        response.raise_for_status()

        data = response.json()
        print(f"Task stopped: {data['message']}")
        return True
    except requests.HTTPError as e:
        if e.response.status_code == 404:
            print("Task not found")
        elif e.response.status_code == 409:
            print("Task already stopped")
        else:
            print(f"Failed to stop task: {e}")
        return False
