"""ExecutorOperator: bounded calls, and a close() that ends a call in flight.

CellRun's re-arming thread may be inside `enable()` when the tool closes the operator; the
call must end with (False, ...) instead of touching the destroyed node (seen as
InvalidHandle in the thread when a run ended early).
"""
import threading

from std_srvs.srv import SetBool

from vla_insertion.ros.executor_operator import ExecutorOperator


def test_a_missing_service_is_an_answer_not_an_exception(ros_domain_id, monkeypatch):
    monkeypatch.setenv('ROS_DOMAIN_ID', str(ros_domain_id))
    with ExecutorOperator('/nobody_here', timeout_s=0.2) as operator:
        ok, message = operator.enable(True)
    assert not ok and message == '/nobody_here/enable is not available'


def test_close_ends_a_call_in_flight_and_later_calls_answer(ros_domain_id, monkeypatch):
    monkeypatch.setenv('ROS_DOMAIN_ID', str(ros_domain_id))
    operator = ExecutorOperator('/nobody_here', timeout_s=120.0)
    answers, errors = [], []

    def call():
        try:
            answers.append(operator.enable(True))
        except Exception as exc:       # noqa: B902 - the defect this test guards against
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    operator.close()                   # while the call waits for the service
    thread.join(timeout=60.0)          # far below the call's own 120 s timeout
    assert not thread.is_alive() and not errors
    assert answers and answers[0][0] is False
    assert operator.enable(True) == (False, 'the operator is closed')


def test_a_served_call_returns_the_services_answer(rclpy_context, ros_domain_id,
                                                   monkeypatch, spin):
    from rclpy.node import Node
    monkeypatch.setenv('ROS_DOMAIN_ID', str(ros_domain_id))
    server = Node('chunk_executor', context=rclpy_context)

    def answer(request, response):
        response.success, response.message = request.data, 'armed'
        return response

    server.create_service(SetBool, '/chunk_executor/enable', answer)
    spin(server)
    with ExecutorOperator(timeout_s=60.0) as operator:
        assert operator.enable(True) == (True, 'armed')
    server.destroy_node()
